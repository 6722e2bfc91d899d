/**
 * A cluster on one machine, for the pod-network tests: a real 3-member etcd
 * (Debian's etcd-server) on loopback ports of the sandbox, started by pid and
 * stopped by pid; nodes as namespaces on an underlay bridge, each with its own
 * `tsnet agent --etcd` running in the sandbox's root namespace and acting on
 * its node through `-n NODE` (a node namespace cannot reach the root
 * namespace's loopback, where etcd listens, as a real node may not reach it
 * from its pod network either); pods as namespaces on a node's bridge.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as link from '../../src/link';
import * as addr from '../../src/addr';
import * as route from '../../src/route';
import type * as netns from '../../src/netns';
import type { ClusterStore } from '../../src/cluster/store';
import { eventually } from './eventually';
import type { TestFn } from 'ava';
import { CLI, run, scratch, type Topology } from './fixtures';

const ETCD = '/usr/bin/etcd';

/**
 * A long-lived child that dies with this process whatever way it ends (an ava worker killed at its timeout runs no
 * after hook): setpriv sets PR_SET_PDEATHSIG, then execs the program, so the pid stays the program's.
 */
function spawnTied(cmd: string, args: readonly string[], opts: SpawnOptions): ChildProcess {
  return spawn('setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args], opts);
}

export interface EtcdMember {
  name: string;
  client: string;
  peer: string;
  dir: string;
  child?: ChildProcess;
  log: string;
}

/** A 3-member etcd cluster on 127.0.0.1 ports `base+1..3` (clients) and `base+11..13` (peers). */
export class EtcdCluster {
  readonly members: EtcdMember[];

  constructor(
    dataDir: string,
    readonly base: number,
    size = 3,
  ) {
    this.members = Array.from({ length: size }, (_, i) => ({
      name: `m${i + 1}`,
      client: `http://127.0.0.1:${base + 1 + i}`,
      peer: `http://127.0.0.1:${base + 11 + i}`,
      dir: path.join(dataDir, `m${i + 1}`),
      log: '',
    }));
  }

  /** The client URLs, as --etcd takes them. */
  get urls(): string {
    return this.members.map((m) => m.client).join(',');
  }

  private launch(m: EtcdMember, state: 'new' | 'existing'): void {
    const cluster = this.members.map((x) => `${x.name}=${x.peer}`).join(',');
    // prettier-ignore
    m.child = spawnTied(ETCD, [
      '--name', m.name, '--data-dir', m.dir,
      '--listen-client-urls', m.client, '--advertise-client-urls', m.client,
      '--listen-peer-urls', m.peer, '--initial-advertise-peer-urls', m.peer,
      '--initial-cluster', cluster, '--initial-cluster-token', `tsnet-test-${this.base}`,
      '--initial-cluster-state', state,
      // Fast elections on loopback: a leader killed is replaced within about a second.
      '--heartbeat-interval', '100', '--election-timeout', '500',
      '--logger', 'zap', '--log-level', 'warn',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    m.child.stderr!.on('data', (d: Buffer) => (m.log = (m.log + d.toString()).slice(-20_000)));
  }

  async start(): Promise<void> {
    for (const m of this.members) this.launch(m, 'new');
    await this.healthy();
  }

  /** Waits until every running member answers and the cluster has a leader. */
  async healthy(ms = 20_000): Promise<void> {
    const running = this.members.filter((m) => m.child && m.child.exitCode === null);
    await eventually(
      () =>
        run('etcdctl', ['--endpoints', running.map((m) => m.client).join(','), 'endpoint', 'health'], {
          env: { ETCDCTL_API: '3' },
          timeoutMs: 5000,
        }).status === 0,
      { ms, what: 'etcd to be healthy', every: 200 },
    );
  }

  /** The leader's name. */
  leader(): EtcdMember {
    const r = run('etcdctl', ['--endpoints', this.urls, 'endpoint', 'status', '-w', 'json'], {
      env: { ETCDCTL_API: '3' },
      timeoutMs: 5000,
    });
    const st = JSON.parse(r.stdout) as {
      Endpoint: string;
      Status: { header: { member_id: number }; leader: number };
    }[];
    const lead = st.find((s) => s.Status.header.member_id === s.Status.leader);
    if (!lead) throw new Error(`no etcd leader: ${r.stdout}${r.stderr}`);
    return this.members.find((m) => m.client === lead.Endpoint)!;
  }

  /** Stops a member by pid: SIGTERM, then SIGKILL after 2 s (a leader may take 5-8 s to hand over). */
  async stop(m: EtcdMember, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const child = m.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
    m.child = undefined;
  }

  /** Restarts a stopped member with its data. */
  restart(m: EtcdMember): void {
    this.launch(m, 'existing');
  }

  /** etcdctl against the cluster. */
  ctl(...args: string[]): string {
    const r = run('etcdctl', ['--endpoints', this.urls, ...args], { env: { ETCDCTL_API: '3' }, timeoutMs: 10_000 });
    if (r.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** `tsnet --etcd URLS cluster init --prefix PREFIX ARGS...`; throws with tsnet's error when it fails. */
  init(prefix: string, ...args: string[]): void {
    const r = run(process.execPath, [CLI, '--etcd', this.urls, 'cluster', 'init', '--prefix', prefix, ...args]);
    if (r.status !== 0) throw new Error(`cluster init ${args.join(' ')}: ${r.stderr}`);
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.members.map((m) => this.stop(m)));
  }
}

/** A `tsnet agent` in cluster mode, started by pid in the sandbox's root namespace, acting on its node with -n. */
export class ClusterAgent {
  child: ChildProcess;
  log = '';
  readonly exited: Promise<number | null>;

  constructor(
    readonly node: ClusterNodeNs,
    readonly etcd: string,
    readonly stateDir: string,
    readonly extra: string[] = [],
  ) {
    // prettier-ignore
    this.child = spawnTied(process.execPath, [
      CLI, '--etcd', etcd, '--state-dir', stateDir, '-n', node.ns.name!,
      'agent', '--socket', path.join(stateDir, 'agent.sock'), '--metrics', '',
      '--node-name', node.name, '--public-ip', node.publicIp, ...extra,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.child.stdout!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Stops the agent by pid and waits for its exit code. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

export interface ClusterNodeNs {
  name: string;
  ns: netns.NetNs;
  publicIp: string;
}

export interface Underlay {
  ns: netns.NetNs;
  bridgeIndex: number;
  tag: string;
  net: number;
}

/**
 * An underlay: bridge `ul0` in namespace PREFIX-TAG-ul, and `count` node
 * namespaces PREFIX-TAG-nI, each with eth0 on it at 192.168.NET.(10+I)/24.
 */
export async function underlay(
  topo: Topology,
  count: number,
  net: number,
  tag: string,
): Promise<{ ul: Underlay; nodes: ClusterNodeNs[] }> {
  const ns = await topo.ns(`${tag}-ul`);
  await link.add(ns, { kind: 'bridge', name: 'ul0', up: true });
  const ul: Underlay = { ns, bridgeIndex: (await link.mustGet(ns, 'ul0')).index, tag, net };
  const nodes: ClusterNodeNs[] = [];
  for (let i = 1; i <= count; i++) nodes.push(await addNode(topo, ul, i));
  return { ul, nodes };
}

/** Node I on the underlay: name nI, public IP 192.168.NET.(10+I). */
export async function addNode(topo: Topology, ul: Underlay, i: number): Promise<ClusterNodeNs> {
  const name = `n${i}`;
  const publicIp = `192.168.${ul.net}.${10 + i}`;
  const ns = await topo.ns(`${ul.tag}-${name}`);
  const port = `u${ul.net}-${name}`;
  await link.add(ul.ns, { kind: 'veth', name: port, master: ul.bridgeIndex, peer: { name: 'eth0', netns: ns } });
  await link.setUp(ul.ns, port);
  await link.setUp(ns, 'eth0');
  await addr.add(ns, `${publicIp}/24`, 'eth0');
  return { name, ns, publicIp };
}

/** The subnet the node's bridge holds (its first address), once the agent has claimed it. */
export async function nodeSubnet(
  node: ClusterNodeNs,
  bridge = 'tsnet0',
  ms = 15_000,
): Promise<{ gw: string; prefix: number; base: string }> {
  const a = await eventually(async () => (await addr.list(node.ns, { dev: bridge, family: 4 }).catch(() => []))[0], {
    ms,
    what: `${node.name}'s bridge to get its subnet`,
    every: 50,
  });
  const o = a.address.split('.').map(Number);
  return { gw: a.address, prefix: a.prefix, base: `${o[0]}.${o[1]}.${o[2]}.${o[3]! - 1}` };
}

/** A pod: namespace PREFIX-NAME with eth0 on the node's bridge, address `.ipIndex` of the node's subnet. */
export async function addPod(
  topo: Topology,
  node: ClusterNodeNs,
  name: string,
  ipIndex: number,
  bridge = 'tsnet0',
): Promise<{ ns: netns.NetNs; ip: string }> {
  const sub = await nodeSubnet(node, bridge);
  const ns = await topo.ns(name);
  const br = await link.mustGet(node.ns, bridge);
  await link.add(node.ns, {
    kind: 'veth',
    name: `v-${name}`.slice(0, 15),
    master: br.index,
    mtu: br.mtu,
    peer: { name: 'eth0', netns: ns, mtu: br.mtu },
  });
  await link.setUp(node.ns, `v-${name}`.slice(0, 15));
  // Hairpin, as a CNI bridge with hairpinMode: a pod may reach itself through a service VIP.
  await link.setBridgePort(node.ns, `v-${name}`.slice(0, 15), { hairpin: true });
  await link.setUp(ns, 'eth0');
  const o = sub.base.split('.').map(Number);
  const ip = `${o[0]}.${o[1]}.${o[2]}.${o[3]! + ipIndex}`;
  await addr.add(ns, `${ip}/${sub.prefix}`, 'eth0');
  await route.replace(ns, { dst: 'default', via: sub.gw });
  return { ns, ip };
}

/** The routes of protocol tsnet on a node, as `ip -j route show proto 74` prints them. */
export function tsnetRoutes(node: ClusterNodeNs): { dst: string; gateway?: string; dev: string; flags: string[] }[] {
  const r = run('ip', ['-j', '-n', node.ns.name!, 'route', 'show', 'proto', '74']);
  return (JSON.parse(r.stdout || '[]') as { dst: string; gateway?: string; dev: string; flags: string[] }[]).sort(
    (a, b) => a.dst.localeCompare(b.dst),
  );
}

/** The vxlan device's permanent neighbours (`ip -j neigh show dev DEV nud permanent`). */
export function vxlanNeighs(node: ClusterNodeNs, dev: string): { dst: string; lladdr: string }[] {
  const r = run('ip', ['-j', '-n', node.ns.name!, 'neigh', 'show', 'dev', dev, 'nud', 'permanent']);
  return (JSON.parse(r.stdout || '[]') as { dst: string; lladdr: string }[])
    .map((n) => ({ dst: n.dst, lladdr: n.lladdr }))
    .sort((a, b) => a.dst.localeCompare(b.dst));
}

/** The vxlan device's own FDB (`bridge -j fdb show dev DEV`), zero-MAC default entries aside. */
export function vxlanFdb(node: ClusterNodeNs, dev: string): { mac: string; dst: string }[] {
  const r = run('bridge', ['-j', '-n', node.ns.name!, 'fdb', 'show', 'dev', dev]);
  return (JSON.parse(r.stdout || '[]') as { mac: string; dst?: string; flags?: string[]; state?: string }[])
    .filter((e) => e.dst && e.mac !== '00:00:00:00:00:00')
    .map((e) => ({ mac: e.mac, dst: e.dst! }))
    .sort((a, b) => a.mac.localeCompare(b.mac));
}

/** Whether the etcd binary is here (CI installs etcd-server). */
export const haveEtcd = (): boolean => fs.existsSync(ETCD);

/**
 * What `ip monitor route nexthop link` prints in a node's namespace over
 * `ms`: empty when nothing was written there (the observer of "a steady
 * state makes zero netlink writes"; neighbour updates are left out, ARP
 * keeps them moving).
 */
export function monitorFor(
  node: ClusterNodeNs,
  ms: number,
  objects = ['route', 'nexthop', 'link'],
  o: { ipv4Only?: boolean } = {},
): Promise<string> {
  // ipv4Only: what the agent writes; the kernel's own IPv6 link-local addresses settle on their own time.
  const child = spawn('ip', [...(o.ipv4Only ? ['-4'] : []), '-n', node.ns.name!, 'monitor', ...objects], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => {
    setTimeout(() => child.kill('SIGTERM'), ms);
    child.once('close', () => resolve(out));
  });
}

/**
 * A synthetic node's lease value (host-gw), its public IP one of 200 on the underlay 192.168.NET.0/24 so that a
 * route to it is valid: synthetic nodes share addresses.
 */
export const syntheticLease = (i: number, net: number): string =>
  JSON.stringify({
    PublicIP: `192.168.${net}.${20 + (i % 200)}`,
    BackendType: 'host-gw',
    BackendData: {},
    NodeName: `syn${i}`,
  });

/** Writes `keys` (key -> value) straight into etcd, 100 to a transaction (etcd allows 128 operations in one). */
export async function putLeases(store: ClusterStore, entries: [key: string, value: string][]): Promise<void> {
  for (let k = 0; k < entries.length; k += 100) {
    const part = entries.slice(k, k + 100);
    await store.client
      .if(part[0]![0], 'Version', '>', -1) // always true: etcd3 builds a transaction from a comparison
      .then(...part.map(([key, value]) => store.client.put(key).value(value)))
      .commit();
  }
}

/** A test's cluster: its nodes, their agents, its key prefix and the nodes' state directories. */
export interface TestCluster {
  ul: Underlay;
  nodes: ClusterNodeNs[];
  agents: ClusterAgent[];
  prefix: string;
  stateDirs: string[];
  agentArgs: string[];
}

/** What a test file's clusters share: its scratch space and its etcd; every agent started, to stop by pid. */
export class ClusterRig {
  readonly agents: ClusterAgent[] = [];

  constructor(
    private readonly s: { topo: Topology; tmp(name: string): string },
    private readonly etcd: EtcdCluster,
  ) {}

  /**
   * `count` nodes with an agent each, under key prefix /t/NAME, after `cluster
   * init ARGS`; the agents are stopped (SIGTERM) when the test ends.
   */
  async cluster(
    t: { teardown(fn: () => Promise<void>): void },
    name: string,
    net: number,
    count: number,
    init: string[],
    agentArgs: string[] = [],
  ): Promise<TestCluster> {
    const prefix = `/t/${name}`;
    this.etcd.init(prefix, ...init);
    const { ul, nodes } = await underlay(this.s.topo, count, net, name);
    const stateDirs = nodes.map((n) => this.s.tmp(`${name}-${n.name}`));
    const c: TestCluster = { ul, nodes, agents: [], prefix, stateDirs, agentArgs: ['--prefix', prefix, ...agentArgs] };
    c.agents = nodes.map((n, i) => this.startAgent(c, n, stateDirs[i]!));
    t.teardown(() => Promise.all(this.agents.splice(0).map((a) => a.stop())).then(() => undefined));
    return c;
  }

  startAgent(c: TestCluster, n: ClusterNodeNs, stateDir: string): ClusterAgent {
    const a = new ClusterAgent(n, this.etcd.urls, stateDir, c.agentArgs);
    this.agents.push(a);
    return a;
  }

  /** Waits until every node has a route to every other node's subnet. */
  async converged(c: TestCluster, ms = 15_000): Promise<void> {
    await eventually(() => c.nodes.every((n) => tsnetRoutes(n).length === c.nodes.length - 1), {
      ms,
      what: 'every node to route to every peer',
      every: 50,
    }).catch((err: Error) => {
      throw new Error(`${err.message}\n${c.agents.map((a) => `--- ${a.node.name}\n${a.log}`).join('\n')}`);
    });
  }

  async killAll(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.stop('SIGKILL')));
  }
}

/**
 * A cluster test file's setup: its scratch space, its 3-member etcd on ports `etcdBase`+ (started before the
 * tests), and its rig; after the tests every agent is killed, etcd stopped and the scratch space removed.
 */
export function clusterFile(test: TestFn, prefix: string, etcdBase: number) {
  const s = scratch(prefix);
  const etcd = new EtcdCluster(s.tmp('etcd'), etcdBase);
  const rig = new ClusterRig(s, etcd);
  test.before(async () => {
    await etcd.start();
  });
  test.after.always(async () => {
    await rig.killAll();
    await etcd.stopAll();
    await s.cleanup();
  });
  return { s, etcd, rig };
}

/** A server in `ns` that answers each connection with the client's address as it sees it; stopped with `s`. */
export async function whoAmIServer(
  s: { servers: { stop(): Promise<void> }[] },
  ns: netns.NetNs,
  ip: string,
  port: number,
): Promise<void> {
  const script = `require('net').createServer((c) => c.end(c.remoteAddress)).listen(${port}, '${ip}', () => console.log('ready'))`;
  const child = ns.spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  s.servers.push({ stop: async () => void child.kill('SIGKILL') });
  await new Promise((resolve) => child.stdout!.once('data', resolve));
}

/** What a whoAmIServer at ip:port says the client in `ns` is. */
export function whoAmI(ns: netns.NetNs, ip: string, port: number): Promise<string> {
  const script = `let s = ''; const c = require('net').connect(${port}, '${ip}'); c.setTimeout(3000, () => process.exit(1)); c.on('data', (d) => (s += d)); c.on('end', () => console.log(s)); c.on('error', (e) => console.log('error ' + e.message));`;
  const child = ns.spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  return new Promise((resolve) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('close', () => resolve(out.trim()));
  });
}
