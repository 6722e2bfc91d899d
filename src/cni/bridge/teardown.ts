/**
 * Removing attachments from what their records say was made: a failed ADD's
 * leftovers, DEL, and GC of every attachment the runtime no longer knows
 * (including those of a plugin killed half-way), even when the container's
 * namespace is gone.
 */
import * as link from '../../link';
import * as neigh from '../../neigh';
import * as spoofcheck from '../../bridge/spoofcheck';
import { parseCidr } from '../../addr';
import * as netns from '../../netns';
import { attachmentKey, validAttachments } from '../ipam';
import { RecordStore, type AttachmentRecord } from '../records';
import type { CniEnv, NetConf } from '../types';
import { hostVethName } from './attachment';
import { parseBridgeConf } from './config';
import { ipam } from './ipam-step';
import { removeNat } from './nat';

/**
 * Removes what a record says was made: NAT rules, the veth pair, its MAC
 * spoof guard (macspoofchk), the host's neighbour entries for the container's addresses (the next container to get
 * one has another MAC), the IPAM reservation, then the record.
 */
export async function teardown(rec: AttachmentRecord, env: CniEnv, records: RecordStore): Promise<void> {
  const host = netns.current();
  await removeNat(rec, host, env);
  await link.del(host, rec.hostIfname); // takes the container end with it; gone already if the namespace is
  const c = parseBridgeConf(rec.conf, env);
  if (c.macspoofchk) await spoofcheck.unguard(host, rec.hostIfname);
  for (const ip of rec.result?.ips ?? []) await neigh.del(host, c.bridge, parseCidr(ip.address).address);
  await ipam(rec.conf, { ...env, containerId: rec.containerId, ifname: rec.ifname }).del();
  records.remove(rec.containerId, rec.ifname);
}

/** CNI DEL: idempotent; works when the namespace or interface is gone and when ADD never happened. */
export async function bridgeDel(conf: NetConf, env: CniEnv): Promise<void> {
  const c = parseBridgeConf(conf, env);
  const records = new RecordStore(c.stateDir, c.name);
  const rec = records.get(env.containerId!, env.ifname!);
  if (rec) return teardown(rec, env, records);
  // No (readable) record: ADD never ran, or died before its first change. Its deterministic leftovers, if any:
  const hostIfname = hostVethName(c.name, env.containerId!, env.ifname!);
  await link.del(netns.current(), hostIfname);
  if (c.macspoofchk) await spoofcheck.unguard(netns.current(), hostIfname);
  await ipam(conf, env).del();
  records.remove(env.containerId!, env.ifname!);
}

/** CNI GC (1.1): releases every attachment of this network not in cni.dev/valid-attachments. */
export async function bridgeGc(conf: NetConf, env: CniEnv): Promise<{ released: string[] }> {
  const c = parseBridgeConf(conf, env);
  const valid = validAttachments(conf);
  const records = new RecordStore(c.stateDir, c.name);
  const released: string[] = [];
  for (const rec of records.list()) {
    if (valid.has(attachmentKey(rec))) continue;
    await teardown(rec, env, records);
    released.push(`${rec.containerId}/${rec.ifname}`);
  }
  records.removeDeadTemps((containerId, ifname) => valid.has(attachmentKey({ containerId, ifname })));
  await ipam(conf, env).gc(valid);
  return { released };
}
