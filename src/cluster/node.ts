/**
 * A cluster node, run by the agent: it claims the node's subnet, keeps its
 * lease alive, programs its peers and keeps them programmed.
 *
 * - The subnet and VTEP MAC are kept in a local state file, so a restart or
 *   an etcd that lost its data gets the same ones back; a key already held
 *   under this node's name is re-attached, never replaced by a new subnet.
 * - Peers: list at revision R, watch from R+1; a compacted watch re-lists.
 *   Every change only marks the peer table dirty; one reconcile (kernel.ts)
 *   diffs the leases' desired state against the kernel, so a missed or
 *   repeated event cannot leave a stale route behind.
 * - Drift: the same reconcile runs every `driftMs` (reads only when nothing
 *   changed), repairing a route, neighbour, FDB entry or device removed by hand.
 * - etcd trouble changes nothing in the kernel: no exit, no flush. A lease
 *   the client gives up on is re-claimed under the same key once etcd answers.
 * - Its own key deleted: after `tsnet cluster leave` (a leave record) the
 *   node removes its peers and `left` resolves; after an expiry it re-claims.
 */
import type { Lease } from 'etcd3';
import type { NetNs } from '../netns';
import { labelOf } from '../netns/internal';
import {
  newMac,
  nodeStateFor,
  peerRecords,
  readNodeState,
  readPeers,
  writeNodeState,
  writePeers,
  type NodeState,
} from './local';
import {
  buildConfig,
  claimable,
  parsePeer,
  parseSubnet,
  sameSubnet,
  subnetKey,
  subnetText,
  type ClusterConfig,
  type LeaseValue,
  type Peer,
  type Subnet,
} from './config';
import { desiredState } from './desired';
import { RETRY_MS, claimSubnet } from './claim';
import { MONITOR_GROUPS, ensureNode, mayBeDrift, reconcile, teardown, type NodeDevices } from './kernel';
import { NETLINK_ROUTE, type NetlinkSocket } from '../netlink/socket';
import type { ClusterStore, StoredLease } from './store';

export interface ClusterNodeOptions {
  store: ClusterStore;
  ns: NetNs;
  nodeName: string;
  publicIp: string;
  bridge: string;
  stateDir: string;
  /** Lease TTL in seconds (default 10; etcd grants 2 at least). */
  ttl?: number;
  /** The safety net's period: a full diff even when the monitor saw nothing (default 10 s). */
  driftMs?: number;
  log: (line: string) => void;
}

export interface ClusterNodeStats {
  reconciles: number;
  writes: number;
  skippedLeases: number;
  lastError?: string;
}

export class ClusterNode {
  readonly stats: ClusterNodeStats = { reconciles: 0, writes: 0, skippedLeases: 0 };
  config?: ClusterConfig;
  /** Settles once the cluster's config is known (before the claim): what the cluster services need to start. */
  readonly configured: Promise<ClusterConfig>;
  private resolveConfigured!: (c: ClusterConfig) => void;
  subnet?: Subnet;
  devices?: NodeDevices;
  /** Resolves when a leave was recorded for this node and its peers are removed. */
  readonly left: Promise<void>;
  private resolveLeft!: () => void;
  private readonly peers = new Map<string, Peer>();
  private readonly skipped = new Set<string>();
  private vtepMac = '';
  private lease?: Lease;
  private watcher?: { cancel(): Promise<void> };
  private driftTimer?: NodeJS.Timeout;
  private monitor?: NetlinkSocket;
  private stopped = false;
  private running?: Promise<void>;
  private dirty = false;
  private overruns = 0;
  /** Bumped on every change of the peer set; what peers.json was last written at. */
  private peersVersion = 0;
  private peersSaved = -1;
  private saved?: NodeState;

  constructor(private readonly o: ClusterNodeOptions) {
    this.left = new Promise((resolve) => (this.resolveLeft = resolve));
    this.configured = new Promise((resolve) => (this.resolveConfigured = resolve));
  }

  get ttl(): number {
    return this.o.ttl ?? 10;
  }

  /** Starts joining in the background; `joined` settles when the node is in (or fails for good). */
  start(): Promise<void> {
    // Another node's file (a state dir reused under a new name) is not this node's: it starts afresh.
    const found = readNodeState(this.o.stateDir);
    const local = found?.node === this.o.nodeName ? found : undefined;
    this.vtepMac = local?.vtepMac ?? newMac();
    this.saved = local;
    return this.join(local);
  }

  private async join(local: NodeState | undefined): Promise<void> {
    if (local?.backend)
      await this.fromLocal(local).catch((err: Error) => this.o.log(`cluster: local state: ${err.message}`));
    const config = await this.waitConfig(local);
    if (!config) return;
    this.config = config;
    this.resolveConfigured(config);
    const kept = local && local.network === config.Network ? parseSubnet(local.subnet, 'subnet') : undefined;
    if (kept && claimable(config, kept)) {
      // What pods already have keeps working while the claim goes on.
      this.subnet = kept;
      this.devices = await ensureNode(this.o.ns, this.setup());
    }
    await this.claim(kept);
    this.watchKernel();
    await this.list();
    this.driftTimer = setInterval(() => this.kick(), this.o.driftMs ?? 10_000);
    this.driftTimer.unref();
  }

  /** The cluster config, once etcd answers with one (logged once a second meanwhile); undefined if stopped first. */
  private async waitConfig(local: NodeState | undefined): Promise<ClusterConfig | undefined> {
    const store = this.o.store;
    for (;;) {
      if (this.stopped) return undefined;
      try {
        const config = await store.readConfig();
        if (config) return config;
        this.o.log(`cluster: no config at ${store.configKey} yet: run tsnet cluster init`);
      } catch (err) {
        const serving = local ? ` (serving ${local.subnet} from local state)` : '';
        this.o.log(`cluster: ${(err as Error).message}; retrying every second${serving}`);
      }
      await sleep(RETRY_MS);
    }
  }

  /**
   * Before etcd answers: the node's devices and its peers as last programmed
   * (node.json, peers.json), so a node that restarted (or rebooted) while
   * etcd is away serves its pods and reaches its peers. etcd's answer then
   * replaces all of it (list-and-diff).
   */
  private async fromLocal(local: NodeState): Promise<void> {
    const b = local.backend!;
    this.config = buildConfig({
      network: local.network,
      subnetLen: parseSubnet(local.subnet, 'subnet').prefix,
      backend: b.type,
      ...(b.type === 'vxlan' ? { vni: b.vni ?? 1, port: b.port ?? 8472, directRouting: !!b.directRouting } : {}),
    });
    this.subnet = parseSubnet(local.subnet, 'subnet');
    const records = readPeers(this.o.stateDir) ?? [];
    for (const r of records) {
      const subnet = parseSubnet(r.subnet, 'subnet');
      const backend = r.vtepMac ? 'vxlan' : 'host-gw';
      this.peers.set(subnetKey(subnet), {
        subnet,
        publicIp: r.publicIp,
        backend,
        ...(r.vtepMac ? { vtepMac: r.vtepMac } : {}),
        name: r.name,
        lease: '0',
      });
    }
    this.peersSaved = this.peersVersion;
    this.watchKernel();
    await this.settled();
    this.o.log(`cluster: ${local.subnet} and ${records.length} peers programmed from local state`);
  }

  private setup() {
    return {
      config: this.config!,
      subnet: this.subnet!,
      publicIp: this.o.publicIp,
      bridge: this.o.bridge,
      vtepMac: this.vtepMac,
    };
  }

  private leaseValue(): LeaseValue {
    const vx = this.config!.Backend.Type === 'vxlan';
    return {
      PublicIP: this.o.publicIp,
      BackendType: this.config!.Backend.Type,
      BackendData: vx ? { VNI: this.config!.Backend.VNI ?? 1, VtepMAC: this.vtepMac } : {},
      NodeName: this.o.nodeName,
    };
  }

  /** Claims a subnet (./claim.ts) and adopts it; fatal claims (pool exhausted, our subnet taken) throw. */
  private async claim(prefer: Subnet | undefined): Promise<void> {
    const got = await claimSubnet({
      store: this.o.store,
      config: this.config!,
      nodeName: this.o.nodeName,
      value: this.leaseValue(),
      ...(prefer ? { prefer } : {}),
      ttl: this.ttl,
      stateDir: this.o.stateDir,
      log: this.o.log,
      stopped: () => this.stopped,
    });
    if (got) this.adopt(got.subnet, got.lease);
  }

  private adopt(s: Subnet, lease: Lease): void {
    if (this.lease && this.lease !== lease) this.lease.release();
    this.lease = lease;
    this.subnet = s;
    this.save();
    this.o.log(`cluster: ${this.o.nodeName} holds ${subnetText(s)} (lease ttl ${this.ttl} s)`);
    lease.on('lost', (err: Error) => {
      if (this.stopped || this.lease !== lease) return;
      this.o.log(`cluster: lease lost (${err.message.split('\n')[0]}): re-claiming ${subnetText(s)}`);
      void this.claim(s).catch((e: Error) => this.o.log(`cluster: ${e.message}`));
    });
  }

  /** Writes the node's local state when it changed (the subnet claimed, the bridge's MTU known). */
  private save(): void {
    const s = nodeStateFor({
      node: this.o.nodeName,
      subnet: this.subnet!,
      vtepMac: this.vtepMac,
      config: this.config!,
      bridge: this.o.bridge,
      prefix: this.o.store.prefix,
      ...(this.devices ? { devices: this.devices } : {}),
    });
    if (JSON.stringify(s) === JSON.stringify(this.saved)) return;
    writeNodeState(this.o.stateDir, s);
    this.saved = s;
  }

  /** The peers as programmed, for doctor, trace and topology without etcd: written when the set changed. */
  private savePeers(): void {
    if (this.peersSaved === this.peersVersion) return;
    writePeers(this.o.stateDir, peerRecords(this.peers.values(), this.subnet!));
    this.peersSaved = this.peersVersion;
  }

  /** Lists every lease at revision R, programs them, and watches from R+1. */
  private async list(): Promise<void> {
    const store = this.o.store;
    for (;;) {
      if (this.stopped) return;
      try {
        const { revision, leases } = await store.listLeases();
        this.peers.clear();
        this.peersVersion++;
        for (const l of leases) this.put(l);
        this.kick();
        await this.watch(revision);
        return;
      } catch (err) {
        this.o.log(`cluster: ${(err as Error).message}; retrying every second`);
        await sleep(RETRY_MS);
      }
    }
  }

  private async watch(revision: string): Promise<void> {
    const store = this.o.store;
    const w = await store.client
      .watch()
      .prefix(store.subnetsPrefix)
      .startRevision(String(BigInt(revision) + 1n))
      .withPreviousKV()
      .create();
    this.watcher = w;
    w.on('put', (kv) => {
      const l = store.stored(kv);
      if (l) this.put(l);
      this.kick();
    });
    w.on('delete', (kv) => {
      const l = store.stored(kv);
      if (!l) return;
      this.peers.delete(l.key);
      this.peersVersion++;
      this.kick();
      if (this.subnet && sameSubnet(l.subnet, this.subnet)) void this.ownKeyGone();
    });
    w.on('error', (err: Error) => {
      // A start revision compacted away cancels the watch for good: list again.
      if (this.stopped || this.watcher !== w) return;
      // etcd cancels a watch whose start revision was compacted with no reason given (compact_revision set).
      const why = err.message
        .split('\n')[0]!
        .replace(/^Watcher canceled: *$/, 'cancelled by etcd: its revision was compacted');
      this.o.log(`cluster: watch ended (${why}): listing again`);
      // Not w.cancel(): etcd3 has already detached a watcher it reports cancelled, and a cancel request for it
      // draws an answer for a watch id etcd3 no longer knows, which it throws from the stream (the agent dies).
      this.watcher = undefined;
      void this.list();
    });
  }

  private put(l: StoredLease): void {
    this.peersVersion++;
    const r = parsePeer(this.config!, l.key, l.value, l.lease);
    if ('skip' in r) {
      this.peers.delete(l.key);
      if (!this.skipped.has(`${l.key}@${l.modRevision}`)) {
        this.skipped.add(`${l.key}@${l.modRevision}`);
        this.stats.skippedLeases++;
        this.o.log(`cluster: skipping ${r.skip}`);
      }
      return;
    }
    this.peers.set(l.key, r.peer);
  }

  /** Own key deleted: a recorded leave ends the node; an expiry re-claims the same subnet. */
  private async ownKeyGone(): Promise<void> {
    const store = this.o.store;
    let left = false;
    try {
      left = await store.leaveRecorded(this.o.nodeName);
    } catch (err) {
      this.o.log(`cluster: ${(err as Error).message}`);
    }
    if (left) {
      this.o.log(`cluster: ${this.o.nodeName} was removed (tsnet cluster leave): removing its peers`);
      await this.stop();
      await teardown(this.o.ns, this.config!).catch((e: Error) => this.o.log(`cluster: ${e.message}`));
      await store.clearLeave(this.o.nodeName).catch(() => undefined);
      this.resolveLeft();
      return;
    }
    this.o.log(`cluster: the lease on ${subnetText(this.subnet!)} expired: re-claiming it`);
    await this.claim(this.subnet).catch((e: Error) => this.o.log(`cluster: ${e.message}`));
  }

  /**
   * Drift is seen as it happens: a monitor socket in the node's namespace
   * (`ip monitor link route neigh nexthop`) marks the table dirty on a
   * change that may be a hand edit; our own writes come back too and cost
   * one reconcile that finds nothing to do. Lost notifications: a full diff.
   */
  private watchKernel(): void {
    if (this.monitor || this.stopped) return;
    const sock = this.o.ns.openNetlink(NETLINK_ROUTE);
    sock.subscribe(
      MONITOR_GROUPS,
      (m) => {
        if (mayBeDrift(m, this.devices?.vxlan?.index)) this.kick();
      },
      () => this.kick(),
    );
    this.monitor = sock;
  }

  /** Marks the peer table dirty; one reconcile runs at a time and again while marked. */
  kick(): void {
    this.dirty = true;
    this.running ??= this.drain().finally(() => (this.running = undefined));
  }

  /** Resolves once a reconcile that started after this call has finished. */
  async settled(): Promise<void> {
    this.kick();
    while (this.running) await this.running;
  }

  private async drain(): Promise<void> {
    while (this.dirty && !this.stopped && this.config && this.subnet) {
      this.dirty = false;
      try {
        this.devices = await ensureNode(this.o.ns, this.setup());
        this.save();
        const want = desiredState(
          this.config,
          { subnet: this.subnet, publicIp: this.o.publicIp, underlay: this.devices.underlay.subnet },
          this.peers.values(),
        );
        const r = await reconcile(this.o.ns, want, this.devices);
        this.savePeers();
        this.stats.reconciles++;
        this.stats.writes += r.writes;
        if (r.errors.length) this.o.log(`cluster: in ${labelOf(this.o.ns)}: ${r.errors.slice(0, 3).join('; ')}`);
        // Replies lost: read it all back at once, but not in a loop if it keeps happening.
        if (r.overrun && ++this.overruns <= 3) this.dirty = true;
        else if (r.overrun) setTimeout(() => this.kick(), RETRY_MS).unref();
        else this.overruns = 0;
        delete this.stats.lastError;
      } catch (err) {
        const msg = (err as Error).message;
        if (this.stats.lastError !== msg) this.o.log(`cluster: reconcile: ${msg}`);
        this.stats.lastError = msg;
      }
    }
  }

  /** Stops watching and renewing, leaving the lease to expire and the kernel as it is (SIGTERM keeps the subnet). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.driftTimer);
    this.monitor?.close();
    this.lease?.release();
    await this.watcher?.cancel().catch(() => undefined);
    await this.running;
  }

  /** What `cluster ls` and the agent's status show of this node. */
  summary(): { node: string; subnet?: string; publicIp: string; peers: number; stats: ClusterNodeStats } {
    return {
      node: this.o.nodeName,
      ...(this.subnet ? { subnet: subnetText(this.subnet) } : {}),
      publicIp: this.o.publicIp,
      peers: [...this.peers.values()].filter((p) => !this.subnet || !sameSubnet(p.subnet, this.subnet)).length,
      stats: this.stats,
    };
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
