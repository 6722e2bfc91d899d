/**
 * Doctor check on the CNI state on disk: attachments whose namespace is gone
 * (the runtime never called DEL) and address reservations no attachment
 * holds (the address is lost until released).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_DATA_DIR } from '../../cni/ipam/config';
import { IpamStore } from '../../cni/ipam/store';
import { recordsByNetwork, type AttachmentRecord } from '../../cni/records';
import { stateDir as defaultStateDir } from '../../state';
import type { Check, Finding } from './check';

export const cniState: Check = {
  name: 'cni-state',
  run(v) {
    return (v.options.stateDirs ?? [defaultStateDir()]).flatMap(findings);
  },
};

function findings(stateDir: string): Finding[] {
  return recordsByNetwork(stateDir).flatMap(({ network, records }) => [
    ...goneNamespaces(network, records),
    ...leakedReservations(network, records),
  ]);
}

function goneNamespaces(network: string, records: readonly AttachmentRecord[]): Finding[] {
  return records
    .filter((r) => r.netns && !fs.existsSync(r.netns))
    .map((r) => ({
      where: `${network} ${r.containerId}:${r.ifname}`,
      problem: `attachment ${r.containerId}:${r.ifname} of network ${network} has no namespace any more (${r.netns} is gone): its address and rules are still held`,
      fix: 'CNI DEL for it (the runtime), or CNI GC with the live attachments',
    }));
}

/** Reservations of the host-local layout (tsnet-ipam's too) that no attachment of the network holds. */
function leakedReservations(network: string, records: readonly AttachmentRecord[]): Finding[] {
  const dataDirs = new Set(
    records
      .filter((r) => !r.conf?.ipam?.type || ['tsnet-ipam', 'host-local'].includes(r.conf.ipam.type))
      .map((r) => (r.conf?.ipam?.dataDir as string | undefined) ?? DEFAULT_DATA_DIR),
  );
  const live = new Set(records.map((r) => `${r.containerId}\n${r.ifname}`));
  return [...dataDirs].flatMap((data) => {
    const store = new IpamStore(data, network);
    return store
      .list()
      .filter((r) => r.containerId && !live.has(`${r.containerId}\n${r.ifname}`))
      .map((r) => ({
        where: `${network} ${r.ip}`,
        problem: `address ${r.ip} of network ${network} is reserved for ${r.containerId}${r.ifname ? `:${r.ifname}` : ''}, which has no attachment: the address is lost until released`,
        fix: `CNI GC of network ${network} with its live attachments, or remove ${path.join(store.dir, r.ip)}`,
      }));
  });
}
