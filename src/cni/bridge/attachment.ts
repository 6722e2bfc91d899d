/**
 * One attachment (network + container id + ifname): the names derived from
 * it, which DEL finds again without a record, the record ADD starts from,
 * and the container's namespace it goes into.
 */
import { createHash } from 'node:crypto';
import * as netns from '../../netns';
import { hasCode } from '../../errors';
import { stateDir as defaultStateDir } from '../../state';
import { CniError, CNI_ERR } from '../errors';
import type { AttachmentRecord } from '../records';
import type { CniEnv, NetConf } from '../types';
import type { BridgeConf } from './config';

/** A stable tag for one attachment (network + container + ifname): names derived from it are found again without a record. */
export const attachmentTag = (network: string, containerId: string, ifname: string): string =>
  createHash('sha256').update(`${network}/${containerId}/${ifname}`).digest('hex');

/** The host end's name: the same for the same attachment (so DEL finds it without a record), distinct across attachments. */
export const hostVethName = (network: string, containerId: string, ifname: string): string =>
  `veth${attachmentTag(network, containerId, ifname).slice(0, 11)}`;

/** The config as the record keeps it: without what belongs to one call (prevResult, runtimeConfig, GC's attachment lists). */
function storedConf(conf: NetConf): NetConf {
  const {
    prevResult: _p,
    runtimeConfig: _r,
    'cni.dev/valid-attachments': _v,
    'cni.dev/attachments': _a,
    ...rest
  } = conf;
  return rest as NetConf;
}

/** The record of an ADD about to start: nothing made yet, no NAT rules. */
export function newRecord(c: BridgeConf, conf: NetConf, env: CniEnv): AttachmentRecord {
  const cid = env.containerId!;
  const ifname = env.ifname!;
  return {
    version: 1,
    network: c.name,
    containerId: cid,
    ifname,
    netns: env.netns!,
    bridge: c.bridge,
    hostIfname: hostVethName(c.name, cid, ifname),
    conf: storedConf(conf),
    nat: { stateDir: defaultStateDir(c.stateDir), backend: c.natBackend, rules: [], forwards: [] },
    complete: false,
  };
}

/** The container's namespace (CNI_NETNS); one that is not there is error 3, unknown container. */
export function openContainer(path: string): netns.NetNs {
  try {
    return netns.openPath(path);
  } catch (err) {
    if (hasCode(err, 'ENOENT', 'EINVAL', 'ENOTDIR', 'EACCES'))
      throw new CniError(
        CNI_ERR.unknownContainer,
        `failed to open netns ${JSON.stringify(path)}: ${(err as Error).message}`,
      );
    throw err;
  }
}
