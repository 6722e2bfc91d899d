/**
 * tsnet-bridge: the reference `bridge` plugin's job as library calls
 * (config + env in, result or CniError out), so the standalone binary and a
 * resident agent run the same code. ADD follows the reference's order:
 *
 *   ensure bridge -> veth (peer created inside the container as CNI_IFNAME)
 *   -> IPAM -> addresses + routes inside -> gateway on the bridge, forwarding
 *   -> masquerade / port mappings (the NAT engine) -> wait for the port to forward
 *
 * Everything ADD creates is written to an attachment record first (see
 * ./records), so a failed ADD, a DEL, or a GC after a crash removes exactly
 * that, even when the container's namespace is gone.
 */
import { createHash } from 'node:crypto';
import * as netns from '../netns';
import * as link from '../link';
import * as addr from '../addr';
import * as route from '../route';
import * as bridge from '../bridge';
import * as sysctl from '../sysctl';
import { stateDir as defaultStateDir } from '../state';
import type { NatChange, NatEngine } from '../nat/engine';
import { BACKENDS, parseBackend, resolveChoice, type BackendChoice } from '../nat/backends';
import type { Forward, NatRule } from '../nat/model';
import { CniError, CNI_ERR, invalidConfig, reportInput } from './errors';
import { hasCode } from '../errors';
import { RecordStore, type AttachmentRecord } from './records';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, attachmentKey, validAttachments } from './ipam';
import { parseIpamConfig, validateNetworkName } from './ipam/config';
import { execPlugin, findPlugin } from './delegate';
import type { CniEnv, NetConf, PortMapping, Result } from './types';

export const BUILTIN_IPAM = 'tsnet-ipam';

export interface BridgeConf {
  name: string;
  bridge: string;
  isGateway: boolean;
  isDefaultGateway: boolean;
  forceAddress: boolean;
  ipMasq: boolean;
  mtu?: number;
  hairpinMode: boolean;
  promiscMode: boolean;
  enabledad: boolean;
  /** tsnet: which NAT backend ipMasq and port mappings use (default auto: netlink, no binary needed). */
  natBackend: BackendChoice;
  /** tsnet: where attachment records and NAT state live (default $TSNET_STATE_DIR, else /var/lib/tsnet). */
  stateDir?: string;
  ipamType: string;
}

function bool(conf: NetConf, key: string): boolean {
  const v = conf[key];
  if (v === undefined) return false;
  if (typeof v !== 'boolean')
    throw invalidConfig(`network ${conf.name}: "${key}" must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** The network's options; `env` supplies the state directory the caller runs with (TSNET_STATE_DIR, or the agent's) when the config names none. */
export function parseBridgeConf(conf: NetConf, env?: Pick<CniEnv, 'stateDir'>): BridgeConf {
  const name = validateNetworkName(conf.name);
  const br = conf.bridge ?? 'cni0';
  try {
    link.validateIfname(br as string);
  } catch (err) {
    reportInput(CNI_ERR.invalidConfig, `network ${name}: bridge`, err);
  }
  if (conf.vlan !== undefined) {
    throw new CniError(
      CNI_ERR.unsupportedField,
      `network ${name}: "vlan" is not supported by tsnet-bridge yet (needs bridge VLAN filtering, which this kernel build may lack): remove it or use the reference bridge`,
    );
  }
  if (conf.macspoofchk === true) {
    throw new CniError(
      CNI_ERR.unsupportedField,
      `network ${name}: "macspoofchk" is not supported by tsnet-bridge yet: remove it or use the reference bridge`,
    );
  }
  const c: BridgeConf = {
    name,
    bridge: br as string,
    isGateway: bool(conf, 'isGateway') || bool(conf, 'isDefaultGateway'),
    isDefaultGateway: bool(conf, 'isDefaultGateway'),
    forceAddress: bool(conf, 'forceAddress'),
    ipMasq: bool(conf, 'ipMasq'),
    hairpinMode: bool(conf, 'hairpinMode'),
    promiscMode: bool(conf, 'promiscMode'),
    enabledad: bool(conf, 'enabledad'),
    natBackend: 'auto',
    ipamType: '',
  };
  if (conf.mtu !== undefined) {
    try {
      link.validateMtu(conf.mtu as number);
    } catch (err) {
      reportInput(CNI_ERR.invalidConfig, `network ${name}`, err);
    }
    c.mtu = conf.mtu as number;
  }
  if (conf.natBackend !== undefined) {
    c.natBackend = parseBackend(conf.natBackend, `network ${name}: natBackend`);
  }
  if (conf.stateDir !== undefined) {
    if (typeof conf.stateDir !== 'string' || !conf.stateDir.startsWith('/'))
      throw invalidConfig(`network ${name}: stateDir must be an absolute path`);
    c.stateDir = conf.stateDir;
  } else if (env?.stateDir) {
    c.stateDir = env.stateDir;
  }
  if (!conf.ipam || typeof conf.ipam.type !== 'string' || conf.ipam.type === '')
    throw invalidConfig(
      `network ${name}: "ipam" with a "type" is required (e.g. {"type": "tsnet-ipam", "subnet": "10.22.0.0/16"})`,
    );
  c.ipamType = conf.ipam.type;
  return c;
}

/** A stable tag for one attachment (network + container + ifname): names derived from it are found again without a record. */
const attachmentTag = (network: string, containerId: string, ifname: string): string =>
  createHash('sha256').update(`${network}/${containerId}/${ifname}`).digest('hex');

/** The host end's name: the same for the same attachment (so DEL finds it without a record), distinct across attachments. */
export const hostVethName = (network: string, containerId: string, ifname: string): string =>
  `veth${attachmentTag(network, containerId, ifname).slice(0, 11)}`;

/** The IPAM step: tsnet-ipam in process, anything else executed from CNI_PATH. */
function ipam(conf: NetConf, env: CniEnv) {
  const type = conf.ipam!.type;
  const builtin = type === BUILTIN_IPAM;
  const stdin = JSON.stringify(conf);
  /** Old plugins answer GC/STATUS with error 4 (unknown CNI_COMMAND): nothing to do for them. */
  const tolerateUnknown = (e: unknown) => {
    if (!(e instanceof CniError && e.code === CNI_ERR.invalidEnv)) throw e;
  };
  return {
    add: async (): Promise<Result> => (builtin ? ipamAdd(conf, env) : (await execPlugin(type, 'ADD', env, stdin))!),
    del: async (): Promise<void> => {
      if (builtin) await ipamDel(conf, env);
      else await execPlugin(type, 'DEL', env, stdin);
    },
    check: async (prev: Result): Promise<void> => {
      if (builtin) await ipamCheck(conf, env, prev);
      else await execPlugin(type, 'CHECK', env, JSON.stringify({ ...conf, prevResult: prev }));
    },
    gc: async (valid: Set<string>): Promise<void> => {
      if (builtin) await ipamGc(conf, valid);
      else await execPlugin(type, 'GC', env, stdin).catch(tolerateUnknown);
    },
    status: async (): Promise<void> => {
      if (builtin) await ipamStatus(conf);
      else await execPlugin(type, 'STATUS', env, stdin).catch(tolerateUnknown);
    },
  };
}

function openContainer(path: string): netns.NetNs {
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

/** The NAT engine, loaded only by calls that change rules (a plugin process pays for what it uses); the agent keeps it between calls. */
async function engineFor(rec: Pick<AttachmentRecord, 'nat'>, host: netns.NetNs, env: CniEnv): Promise<NatEngine> {
  const opts = { ns: host, stateDir: rec.nat.stateDir, backend: rec.nat.backend as BackendChoice };
  if (env.engines) return env.engines.get(opts);
  const { NatEngine: Engine } = await import('../nat/engine');
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

/** Removes what a record says was made: NAT rules, the veth pair, the IPAM reservation, then the record. */
async function teardown(rec: AttachmentRecord, env: CniEnv, records: RecordStore): Promise<void> {
  const host = netns.current();
  if (rec.nat.rules.length || rec.nat.forwards.length) {
    await (
      await engineFor(rec, host, env)
    ).change([
      ...rec.nat.rules.map((rule): NatChange => ({ kind: 'delete-rule', rule })),
      ...rec.nat.forwards.map((name): NatChange => ({ kind: 'delete-forward', name })),
    ]);
  }
  await link.del(host, rec.hostIfname); // takes the container end with it; gone already if the namespace is
  await ipam(rec.conf, { ...env, containerId: rec.containerId, ifname: rec.ifname }).del();
  records.remove(rec.containerId, rec.ifname);
}

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

async function waitForwarding(host: netns.NetNs, port: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const l = await link.get(host, port);
    if (l?.port?.state === 'forwarding') return;
    if (Date.now() > deadline)
      throw new CniError(
        CNI_ERR.internal,
        `bridge port ${port} did not reach the forwarding state within ${timeoutMs} ms (state ${l?.port?.state ?? 'unknown'})`,
      );
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Gateway addresses on the bridge (isGateway); forceAddress replaces a different address of the same subnet. */
async function ensureGateway(host: netns.NetNs, c: BridgeConf, brIndex: number, cidrs: string[]): Promise<void> {
  for (const cidr of cidrs) {
    const want = addr.parseCidr(cidr);
    const have = await addr.list(host, { dev: brIndex, family: want.family });
    const others = have.filter(
      (a) => a.address !== want.address && addr.contains(want, a.address) && a.scope !== 'link',
    );
    for (const o of others) {
      if (!c.forceAddress)
        throw new CniError(
          CNI_ERR.internal,
          `bridge ${c.bridge} already has address ${o.cidr} in ${want.network}/${want.prefix}, not gateway ${want.address}: set "forceAddress": true to replace it`,
        );
      await addr.del(host, o.cidr, brIndex);
    }
    if (!have.some((a) => a.address === want.address && a.prefix === want.prefix))
      await addr.replace(host, cidr, brIndex, { noDad: true });
    const key = want.family === 4 ? sysctl.keys.ipForward : sysctl.keys.ipv6Forwarding;
    if (sysctl.get(host, key).trim() !== '1') sysctl.set(host, key, 1);
  }
}

/** CNI ADD. */
export async function bridgeAdd(conf: NetConf, env: CniEnv): Promise<Result> {
  const c = parseBridgeConf(conf, env);
  const cid = env.containerId!;
  const ifname = env.ifname!;
  const host = netns.current();
  const ns = openContainer(env.netns!);
  const records = new RecordStore(c.stateDir, c.name);
  try {
    const prior = records.get(cid, ifname);
    if (prior?.complete && prior.result && prior.netns === env.netns && (await link.get(ns, ifname)))
      return prior.result; // the same ADD again
    if (prior) await teardown(prior, env, records); // a leftover of an ADD that died half-way
    // Config errors surface before anything is made.
    if (c.ipamType === BUILTIN_IPAM) parseIpamConfig(conf);
    else findPlugin(c.ipamType, env.path);
    const rec: AttachmentRecord = {
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
    records.put(rec, { durable: false }); // before the first change: whatever happens next, DEL and GC can find it (a new file: nothing durable is replaced)
    try {
      return await addSteps(c, conf, env, host, ns, rec, records);
    } catch (err) {
      await teardown(rec, env, records).catch(() => {
        /* the original error is the one to report; GC retries the rest */
      });
      throw err;
    }
  } finally {
    ns.close();
  }
}

async function addSteps(
  c: BridgeConf,
  conf: NetConf,
  env: CniEnv,
  host: netns.NetNs,
  ns: netns.NetNs,
  rec: AttachmentRecord,
  records: RecordStore,
): Promise<Result> {
  const ifname = env.ifname!;
  const rc = conf.runtimeConfig ?? {};
  if (await link.get(ns, ifname))
    throw new CniError(CNI_ERR.internal, `container interface ${ifname} already exists in ${env.netns}`);
  const mtu = rc.mtu ?? c.mtu;
  if (rc.mac !== undefined) {
    try {
      link.validateMac(rc.mac);
    } catch (err) {
      reportInput(CNI_ERR.invalidConfig, 'runtimeConfig.mac', err);
    }
  }

  const br = await bridge.ensure(host, c.bridge, c.mtu === undefined ? {} : { mtu: c.mtu });
  if (c.promiscMode && !br.promisc) await link.set(host, br.index, { promisc: true });
  await link.add(host, {
    kind: 'veth',
    name: rec.hostIfname,
    master: br.index,
    mtu,
    up: true,
    peer: { name: ifname, netns: ns, mtu, mac: rc.mac },
  });
  if (c.hairpinMode) await link.setBridgePort(host, rec.hostIfname, { hairpin: true });

  const ip = await ipam(conf, env).add();
  if (!ip.ips?.length) throw new CniError(CNI_ERR.internal, `IPAM plugin ${c.ipamType} returned no IP configuration`);

  const gwOf = (fam: 4 | 6) => ip.ips!.find((a) => addr.parseCidr(a.address).family === fam && a.gateway)?.gateway;
  const routes = [...(ip.routes ?? [])];
  if (c.isDefaultGateway) {
    for (const fam of [4, 6] as const) {
      const gw = gwOf(fam);
      const dst = fam === 4 ? '0.0.0.0/0' : '::/0';
      if (gw && !routes.some((r) => r.dst === dst)) routes.push({ dst, gw });
    }
  }
  // The gateway first: a port mapping's route_localnet goes on the interface the host routes the container by.
  if (c.isGateway) {
    await ensureGateway(
      host,
      c,
      br.index,
      ip.ips.filter((a) => a.gateway).map((a) => `${a.gateway}/${addr.parseCidr(a.address).prefix}`),
    );
  }

  // Then two independent halves at once: the container side, and the NAT rules on the host.
  const containerSide = async () => {
    // Addresses, link up, routes (a route without a gateway goes via its family's gateway).
    await link.setUp(ns, 'lo');
    for (const a of ip.ips!) await addr.replace(ns, a.address, ifname, { noDad: !c.enabledad });
    await link.setUp(ns, ifname);
    for (const r of routes) {
      const fam = addr.parseCidr(r.dst).family;
      const via = r.gw ?? gwOf(fam);
      await route.replace(ns, {
        dst: r.dst === '0.0.0.0/0' || r.dst === '::/0' ? 'default' : r.dst,
        dev: ifname,
        ...(via ? { via } : {}),
      });
    }
    await waitForwarding(host, rec.hostIfname);
  };
  // NAT: masquerade the container's traffic leaving the bridge; port mappings as forwards (+ hairpin masquerade).
  const nat = async () => {
    const ips = ip.ips!.map((a) => addr.parseCidr(a.address));
    const host32 = (x: addr.Cidr) => `${x.address}/${x.family === 4 ? 32 : 128}`;
    const rules: NatRule[] = c.ipMasq
      ? ips.map((x) => ({ kind: 'masquerade', source: host32(x), outNot: c.bridge }))
      : [];
    const forwards = rc.portMappings?.length
      ? portForwards(
          c.name,
          rec.containerId,
          ifname,
          rc.portMappings,
          ips.map((x) => x.address),
        )
      : [];
    if (forwards.length)
      for (const x of ips) rules.push({ kind: 'masquerade', source: host32(x), destination: host32(x) });
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
  };
  const failed = (await Promise.allSettled([nat(), containerSide()])).find(
    (r): r is PromiseRejectedResult => r.status === 'rejected',
  );
  if (failed) throw failed.reason; // the caller tears down both halves

  const hostEnd = await link.mustGet(host, rec.hostIfname);
  const inside = await link.mustGet(ns, ifname);
  const brNow = await link.mustGet(host, c.bridge);
  const result: Result = {
    cniVersion: conf.cniVersion,
    interfaces: [
      { name: c.bridge, ...(brNow.mac ? { mac: brNow.mac } : {}) },
      { name: rec.hostIfname, ...(hostEnd.mac ? { mac: hostEnd.mac } : {}) },
      { name: ifname, ...(inside.mac ? { mac: inside.mac } : {}), sandbox: env.netns! },
    ],
    ips: ip.ips.map((a) => ({ ...a, interface: 2 })),
    routes,
    dns: conf.dns && Object.keys(conf.dns).length ? conf.dns : (ip.dns ?? {}),
  };
  rec.result = result;
  rec.complete = true;
  records.put(rec); // replaces the durable version naming the NAT rules, so it is durable too
  return result;
}

/** CNI DEL: idempotent; works when the namespace or interface is gone and when ADD never happened. */
export async function bridgeDel(conf: NetConf, env: CniEnv): Promise<void> {
  const c = parseBridgeConf(conf, env);
  const records = new RecordStore(c.stateDir, c.name);
  const rec = records.get(env.containerId!, env.ifname!);
  if (rec) return teardown(rec, env, records);
  // No (readable) record: ADD never ran, or died before its first change. Its deterministic leftovers, if any:
  await link.del(netns.current(), hostVethName(c.name, env.containerId!, env.ifname!));
  await ipam(conf, env).del();
  records.remove(env.containerId!, env.ifname!);
}

/** CNI CHECK: the container interface, its addresses and routes, and the host side, against prevResult. */
export async function bridgeCheck(conf: NetConf, env: CniEnv, prev: Result | undefined): Promise<void> {
  const c = parseBridgeConf(conf, env);
  if (!prev) throw new CniError(CNI_ERR.invalidConfig, 'CHECK needs prevResult in the network config');
  const ifname = env.ifname!;
  const host = netns.current();
  const fail = (msg: string) => new CniError(CNI_ERR.internal, msg);
  const ns = openContainer(env.netns!);
  try {
    const inside = await link.get(ns, ifname);
    if (!inside) throw fail(`interface ${ifname} is missing in ${env.netns}`);
    if (inside.kind !== 'veth') throw fail(`${ifname} in ${env.netns} is a ${inside.kind ?? 'device'}, not a veth`);
    const idx = (prev.interfaces ?? []).findIndex((i) => i.name === ifname && i.sandbox !== undefined);
    if (idx < 0) throw fail(`prevResult has no interface ${ifname} with a sandbox`);
    const want = prev.interfaces![idx]!;
    if (want.mac && inside.mac && want.mac.toLowerCase() !== inside.mac.toLowerCase())
      throw fail(`${ifname} has MAC ${inside.mac}, prevResult says ${want.mac}`);
    const have = await addr.list(ns, { dev: inside.index });
    for (const a of (prev.ips ?? []).filter((x) => x.interface === idx)) {
      const w = addr.parseCidr(a.address);
      if (!have.some((h) => h.address === w.address && h.prefix === w.prefix))
        throw fail(`address ${a.address} is missing on ${ifname} in ${env.netns}`);
    }
    const rts = await route.list(ns, { table: 'all' });
    for (const r of prev.routes ?? []) {
      const d =
        r.dst === '0.0.0.0/0' || r.dst === '::/0'
          ? 'default'
          : (() => {
              const x = addr.parseCidr(r.dst);
              return `${x.network}/${x.prefix}`;
            })();
      const fam = addr.parseCidr(r.dst).family;
      if (
        !rts.some(
          (x) => x.family === fam && x.dst === d && (r.gw === undefined || x.gateway === addr.parseIp(r.gw).address),
        )
      )
        throw fail(`route ${r.dst}${r.gw ? ` via ${r.gw}` : ''} is missing in ${env.netns}`);
    }
    if (inside.peerIndex === undefined) throw fail(`${ifname} in ${env.netns} has no peer`);
    const hostName =
      (prev.interfaces ?? []).find((i) => i.sandbox === undefined && i.name !== c.bridge)?.name ??
      hostVethName(c.name, env.containerId!, ifname);
    const hostEnd = await link.get(host, hostName);
    const br = await link.get(host, c.bridge);
    if (!br || br.kind !== 'bridge') throw fail(`bridge ${c.bridge} is missing`);
    if (!hostEnd || hostEnd.index !== inside.peerIndex || hostEnd.master !== br.index)
      throw fail(`host end ${hostName} of ${ifname} is missing or not on bridge ${c.bridge}`);
  } finally {
    ns.close();
  }
  await ipam(conf, env).check(prev);
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

/** CNI STATUS (1.1): ready unless IPAM cannot allocate or the NAT tools are missing. */
export async function bridgeStatus(conf: NetConf, env: CniEnv): Promise<void> {
  const c = parseBridgeConf(conf, env);
  if (c.ipMasq || conf.capabilities?.portMappings) {
    const { systemTool } = await import('../nat/exec');
    const fs = await import('node:fs');
    for (const tool of BACKENDS[resolveChoice(c.natBackend)].binaries) {
      try {
        fs.accessSync(systemTool(tool), fs.constants.X_OK);
      } catch {
        throw new CniError(
          CNI_ERR.notAvailable,
          `network ${c.name}: ${tool} is not installed (needed for ipMasq and port mappings with natBackend ${c.natBackend})`,
        );
      }
    }
  }
  await ipam(conf, env).status();
}
