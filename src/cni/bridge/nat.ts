/**
 * The bridge plugin's NAT: ipMasq's masquerade of the container's traffic
 * leaving the bridge, and runtimeConfig.portMappings as tsnet forwards (with
 * the hairpin masquerade a mapping needs), through the NAT engine. ADD names
 * them in the attachment record before they exist; teardown removes exactly
 * what the record names.
 */
import * as addr from '../../addr';
import type { NetNs } from '../../netns';
import type { NatChange, NatEngine } from '../../nat/engine';
import type { BackendChoice } from '../../nat/backends';
import type { Forward, NatRule } from '../../nat/model';
import { CniError, CNI_ERR, invalidConfig } from '../errors';
import type { AttachmentRecord, RecordStore } from '../records';
import type { CniEnv, IpConfig, PortMapping } from '../types';
import { attachmentTag } from './attachment';
import type { BridgeConf } from './config';

/** The NAT engine, loaded only by calls that change rules (a plugin process pays for what it uses); the agent keeps it between calls. */
async function engineFor(rec: Pick<AttachmentRecord, 'nat'>, host: NetNs, env: CniEnv): Promise<NatEngine> {
  const opts = { ns: host, stateDir: rec.nat.stateDir, backend: rec.nat.backend as BackendChoice };
  if (env.engines) return env.engines.get(opts);
  const { NatEngine: Engine } = await import('../../nat/engine');
  return new Engine(opts);
}

/** Port mappings (runtimeConfig.portMappings) as tsnet forwards to each container address of the mapping's family. */
export function portForwards(
  network: string,
  containerId: string,
  ifname: string,
  mappings: PortMapping[],
  ips: string[],
): Forward[] {
  if (!Array.isArray(mappings)) throw invalidConfig('runtimeConfig.portMappings must be a list');
  const tag = attachmentTag(network, containerId, ifname).slice(0, 12);
  const out: Forward[] = [];
  for (const m of mappings) {
    const proto = (m.protocol ?? 'tcp').toLowerCase();
    if (proto !== 'tcp' && proto !== 'udp')
      throw new CniError(
        CNI_ERR.unsupportedField,
        `port mapping protocol ${JSON.stringify(m.protocol)} is not supported (tcp or udp)`,
      );
    const listen = m.hostIP && m.hostIP !== '0.0.0.0' && m.hostIP !== '::' ? addr.parseIp(m.hostIP) : undefined;
    for (const ip of ips) {
      const fam = addr.parseIp(ip).family;
      if (listen && listen.family !== fam) continue;
      out.push({
        name: `cni-${tag}-${proto}-${m.hostPort}-v${fam}`,
        target: ip,
        targetIp: ip,
        listenPort: m.hostPort,
        targetPort: m.containerPort,
        proto,
        snat: 'none',
        ...(listen ? { listen: listen.address } : {}),
      });
    }
  }
  return out;
}

/** One attachment's NAT: masquerade of each container address (ipMasq), its port mappings, and their hairpin masquerade. */
function attachmentNat(
  c: BridgeConf,
  rec: AttachmentRecord,
  ips: IpConfig[],
  mappings: PortMapping[] | undefined,
): { rules: NatRule[]; forwards: Forward[] } {
  const cidrs = ips.map((a) => addr.parseCidr(a.address));
  const host32 = (x: addr.Cidr) => `${x.address}/${x.family === 4 ? 32 : 128}`;
  const rules: NatRule[] = c.ipMasq
    ? cidrs.map((x) => ({
        kind: 'masquerade',
        source: host32(x),
        outNot: c.bridge,
        // On a cluster node, pod to pod across nodes keeps its addresses (flannel's rule).
        ...(c.clusterNetwork && addr.parseCidr(c.clusterNetwork).family === x.family
          ? { destinationNot: c.clusterNetwork }
          : {}),
      }))
    : [];
  const forwards = mappings?.length
    ? portForwards(
        c.name,
        rec.containerId,
        rec.ifname,
        mappings,
        cidrs.map((x) => x.address),
      )
    : [];
  if (forwards.length)
    for (const x of cidrs) rules.push({ kind: 'masquerade', source: host32(x), destination: host32(x) });
  return { rules, forwards };
}

/** ADD's NAT step: the rules and forwards are written to the record (durably) before they exist. */
export async function addNat(
  c: BridgeConf,
  rec: AttachmentRecord,
  records: RecordStore,
  host: NetNs,
  env: CniEnv,
  ips: IpConfig[],
  mappings: PortMapping[] | undefined,
): Promise<void> {
  const { rules, forwards } = attachmentNat(c, rec, ips, mappings);
  if (!rules.length && !forwards.length) return;
  rec.nat.rules = rules;
  rec.nat.forwards = forwards.map((f) => f.name);
  records.put(rec); // before the rules exist: a crash from here on leaves a record naming them
  await (
    await engineFor(rec, host, env)
  ).change([
    ...rules.map((rule): NatChange => ({ kind: 'add-rule', rule })),
    ...forwards.map((forward): NatChange => ({ kind: 'put-forward', forward })),
  ]);
}

/** Removes the NAT rules and forwards a record names (none named: the engine is not even loaded). */
export async function removeNat(rec: AttachmentRecord, host: NetNs, env: CniEnv): Promise<void> {
  if (!rec.nat.rules.length && !rec.nat.forwards.length) return;
  await (
    await engineFor(rec, host, env)
  ).change([
    ...rec.nat.rules.map((rule): NatChange => ({ kind: 'delete-rule', rule })),
    ...rec.nat.forwards.map((name): NatChange => ({ kind: 'delete-forward', name })),
  ]);
}
