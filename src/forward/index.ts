/**
 * `tsnet forward`: a named, reversible port forward (the live-migration job of
 * `iptables -t nat -A PREROUTING ... -j DNAT` + a POSTROUTING SNAT, done right).
 * A forward is one more element of the NAT engine's desired state, so it is
 * rendered by the same backends, persisted in the same state file, and
 * restored by the same sync.
 */
import * as net from 'node:net';
import { TsnetError, invalid } from '../errors';
import * as addr from '../addr';
import * as conntrack from '../conntrack';
import type { NetNs } from '../netns';
import type { NatChange, NatEngine, SyncReport } from '../nat/engine';
import { neededSysctls } from '../nat/sysctls';
import * as sysctl from '../sysctl';
import {
  normalizeForward,
  parsePort,
  parseProto,
  sameForward,
  validateName,
  type DesiredState,
  type Forward,
  type Proto,
  type SnatMode,
} from '../nat/model';
import { builtScript } from '../native';

export interface ForwardRequest {
  target: string;
  listenPort: number | string;
  targetPort: number | string;
  /** Default: the target as given. */
  name?: string;
  listen?: string;
  proto?: Proto | string;
  snat?: SnatMode;
  /** Check that TARGET:TARGET_PORT accepts a TCP connection first (default true). */
  check?: boolean;
  /** Move existing connections too: delete the conntrack entries of this forward's connections that still go to an earlier target. */
  cutOver?: boolean;
}

/**
 * Who applies a forward's change: by default the engine here, under its lock;
 * the CLI passes the agent's path (src/cli/nat-engine.ts natChange), so a
 * running agent applies it as it applies a service change.
 */
export type ApplyChanges = (changes: NatChange[]) => Promise<SyncReport>;

export interface ForwardResult {
  forward: Forward;
  /** false when the same forward was already in place (nothing applied). */
  changed: boolean;
  report?: SyncReport;
  /** Conntrack entries removed by --cut-over. */
  cutOver: number;
}

/** TARGET through the system resolver (/etc/hosts included), as the clients would have. */
export async function resolveTarget(target: string): Promise<string> {
  if (net.isIP(target)) return target;
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(target))
    throw invalid(`invalid target ${JSON.stringify(target)}: a host name or an IP address`);
  try {
    const dns = await import('node:dns/promises'); // loaded for a name only: most targets are addresses
    return (await dns.lookup(target, { family: 0, verbatim: true })).address;
  } catch (err) {
    throw new TsnetError(
      `cannot resolve target ${target}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { code: 'ENOENT' },
    );
  }
}

/** Whether ip:port accepts a TCP connection, seen from inside `ns`. */
export function checkTcp(ns: NetNs, ip: string, port: number, timeoutMs = 3000): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = ns.spawn(process.execPath, [builtScript('forward/probe.js'), ip, String(port), String(timeoutMs)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0
        ? resolve()
        : reject(
            new TsnetError(
              `target ${addr.formatHostPort(ip, port)} does not accept TCP connections from ${ns.label} (${err.trim() || `exit ${code}`}): nothing changed; fix the target or pass --no-check`,
              { code: 'ECONNREFUSED' },
            ),
          ),
    );
  });
}

/** Validates and resolves a request into the forward it would create; changes nothing. */
export async function plan(ns: NetNs, req: ForwardRequest): Promise<Forward> {
  const name = req.name ?? req.target;
  validateName(name, 'forward name');
  const listenPort = parsePort(req.listenPort, 'listen port');
  const targetPort = parsePort(req.targetPort, 'target port');
  const proto = parseProto(req.proto ?? 'tcp');
  const targetIp = await resolveTarget(req.target);
  const f = normalizeForward({
    name,
    target: req.target,
    targetIp,
    listenPort,
    targetPort,
    proto,
    snat: req.snat ?? 'auto',
    ...(req.listen !== undefined ? { listen: req.listen } : {}),
  });
  if (f.listen) {
    const mine = (await addr.list(ns)).map((a) => a.address);
    if (!mine.includes(f.listen))
      throw invalid(`--listen ${f.listen} is not an address of ${ns.label} (it has ${mine.join(', ') || 'none'})`);
  }
  return f;
}

/**
 * `tsnet forward TARGET LISTEN_PORT TARGET_PORT`: adds (or retargets) the
 * forward; the same request twice changes nothing. `apply`: who applies the
 * change (see ApplyChanges); putting a forward that is already in place is
 * a no-op there too.
 */
export async function add(engine: NatEngine, req: ForwardRequest, apply?: ApplyChanges): Promise<ForwardResult> {
  const f = await plan(engine.ns, req);
  const same = (st: Pick<DesiredState, 'forwards'>) => st.forwards.some((x) => sameForward(x, f));
  let report: SyncReport | undefined;
  // The same forward again changes nothing and probes nothing; otherwise the target is probed first (outside the
  // lock: it may take seconds), and the forward put in place under it, unless another tsnet put the same one meanwhile.
  if (!same(engine.globals())) {
    if (req.check !== false && f.proto === 'tcp') await checkTcp(engine.ns, f.targetIp, f.targetPort);
    report = apply
      ? await apply([{ kind: 'put-forward', forward: f }])
      : await engine.changeWith((st) => (same(st) ? [] : [{ kind: 'put-forward', forward: f }]));
  }
  const cut = req.cutOver ? await cutConnections(engine.ns, f, { stale: true }) : 0;
  return { forward: f, changed: report !== undefined, ...(report ? { report } : {}), cutOver: cut };
}

/**
 * Deletes the conntrack entries of the connections `f` carries (translated
 * connections to its listen port), so their next packet is NATed afresh; with
 * `stale`, only those still going somewhere other than its current target.
 */
export async function cutConnections(ns: NetNs, f: Forward, opts: { stale?: boolean } = {}): Promise<number> {
  const family = f.targetIp.includes(':') ? 6 : 4;
  return conntrack.deleteFlows(
    ns,
    family,
    (c) =>
      c.proto === conntrack.IPPROTO[f.proto] &&
      c.orig.dport === f.listenPort &&
      (f.listen === undefined || c.orig.dst === f.listen) &&
      c.reply.src !== c.orig.dst && // translated: ours, not a local service's
      (!opts.stale || c.reply.src !== f.targetIp || c.reply.sport !== f.targetPort),
  );
}

/** `tsnet forward rm NAME`: removes its rules and the sysctl changes made for it; missing: no-op (returns false). */
export async function remove(
  engine: NatEngine,
  name: string,
  opts: { cut?: boolean; apply?: ApplyChanges } = {},
): Promise<boolean> {
  let old: Forward | undefined;
  if (opts.apply) {
    old = engine.globals().forwards.find((x) => x.name === name);
    if (old) await opts.apply([{ kind: 'delete-forward', name }]); // deleting a forward already gone is a no-op there
  } else {
    await engine.changeWith((st) => {
      old = st.forwards.find((x) => x.name === name);
      return old ? [{ kind: 'delete-forward', name }] : [];
    });
  }
  if (!old) return false;
  if (opts.cut) await cutConnections(engine.ns, old);
  return true;
}

export const list = (engine: NatEngine): Forward[] => engine.globals().forwards;

/**
 * What `add` would do, changing nothing: the sysctls it would set (only
 * those not already so) as `sysctl -w` lines, then the rules a full sync
 * would apply (`tsnet forward ... --dry-run`).
 */
export async function dryRun(engine: NatEngine, req: ForwardRequest): Promise<string> {
  const f = await plan(engine.ns, req);
  const now = engine.read();
  const st = {
    services: now.services,
    rules: now.rules,
    forwards: [...now.forwards.filter((x) => x.name !== f.name), f],
  };
  const sysctls = [...(await neededSysctls(engine.ns, st))]
    .filter(([k, v]) => sysctl.get(engine.ns, k.split('/')) !== v)
    .map(([k, v]) => `# sysctl -w ${k.replace(/\//g, '.')}=${v}\n`);
  return `${sysctls.join('')}${await engine.rules(st)}`;
}
