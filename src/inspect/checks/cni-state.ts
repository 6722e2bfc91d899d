/**
 * Doctor check on the CNI state on disk: attachments whose namespace is gone
 * (the runtime never called DEL) and address reservations no attachment
 * holds (the address is lost until released).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hasCode } from '../../errors';
import { stateDir as defaultStateDir } from '../../state';
import type { Check, Finding } from './check';

/** The part of an attachment record (src/cni/records.ts) the check reads. */
interface AttachmentRecord {
  containerId: string;
  ifname: string;
  netns?: string;
  conf?: { ipam?: { type?: string; dataDir?: string } };
}

export const cniState: Check = {
  name: 'cni-state',
  run(v) {
    return (v.options.stateDirs ?? [defaultStateDir()]).flatMap(findings);
  },
};

function findings(stateDir: string): Finding[] {
  const root = path.join(stateDir, 'cni');
  let networks: string[];
  try {
    networks = fs.readdirSync(root);
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return [];
    throw err;
  }
  return networks.flatMap((network) => {
    const records = readRecords(path.join(root, network));
    return [...goneNamespaces(network, records), ...leakedReservations(network, records)];
  });
}

/** The attachment records of one network; a torn one (power loss) is skipped. */
function readRecords(dir: string): AttachmentRecord[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .flatMap((f) => {
      try {
        const r = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as AttachmentRecord | null;
        return r ? [r] : [];
      } catch {
        return [];
      }
    });
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

/** Reservations of the host-local layout (tsnet-ipam's too): DATA_DIR/NETWORK/IP holds "CONTAINER_ID\nIFNAME". */
function leakedReservations(network: string, records: readonly AttachmentRecord[]): Finding[] {
  const out: Finding[] = [];
  const dataDirs = new Set(
    records
      .filter((r) => !r.conf?.ipam?.type || ['tsnet-ipam', 'host-local'].includes(r.conf.ipam.type))
      .map((r) => r.conf?.ipam?.dataDir ?? '/var/lib/cni/networks'),
  );
  const live = new Set(records.map((r) => `${r.containerId}\n${r.ifname}`));
  for (const data of dataDirs) {
    const rdir = path.join(data, network);
    let files: string[] = [];
    try {
      files = fs.readdirSync(rdir);
    } catch {
      continue;
    }
    for (const f of files.filter((x) => x !== 'lock' && !x.startsWith('last_reserved_ip.'))) {
      const [cid, ifname] = fs.readFileSync(path.join(rdir, f), 'utf8').split(/\r?\n/);
      if (cid && !live.has(`${cid}\n${ifname ?? ''}`)) {
        out.push({
          where: `${network} ${f}`,
          problem: `address ${f} of network ${network} is reserved for ${cid}${ifname ? `:${ifname}` : ''}, which has no attachment: the address is lost until released`,
          fix: `CNI GC of network ${network} with its live attachments, or remove ${path.join(rdir, f)}`,
        });
      }
    }
  }
  return out;
}
