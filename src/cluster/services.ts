/**
 * Cluster services in etcd: one desired state that every node's agent
 * programs, as kube-proxy programs the API server's Services.
 *
 *   <prefix>/services/<namespace>/<name>   the service as `tsnet -j service ls` prints it (no counters)
 *   <prefix>/vips/<ip>:<port>/<proto>       its claim on the VIP, created in the same transaction
 *
 * A name without a namespace is default/<name>. A claim key is created only
 * if absent, so two writers racing for one VIP cannot both win; it goes with
 * its service. Validation is the one-machine engine's (model.ts), and so are
 * the messages.
 */
import { invalid, TsnetError } from '../errors';
import {
  familyOf,
  normalizeService,
  normalizeServices,
  sameService,
  vipClaimed,
  vipKey,
  type Endpoint,
  type Service,
} from '../nat/model';
import { isCluster } from '../nat/origin';
import type { ClusterStore } from './store';

/** etcd's default limit of operations in one transaction is 128. */
const OPS_PER_TXN = 120;

/** "web" -> "default/web"; "ns/web" as it is. */
export const qualifiedName = (name: string): string => (name.includes('/') ? name : `default/${name}`);

/** A service as stored: normalized, its name qualified, fields in `service ls` order. */
export function storedService(s: Service): Service {
  const n = normalizeService({ ...s, name: qualifiedName(s.name) });
  return {
    name: n.name,
    vip: n.vip,
    port: n.port,
    proto: n.proto,
    endpoints: n.endpoints.map((e) => ({ ip: e.ip, port: e.port, weight: e.weight })),
    ...(n.affinitySeconds !== undefined ? { affinitySeconds: n.affinitySeconds } : {}),
    ...(n.masqueradeNotFrom !== undefined ? { masqueradeNotFrom: n.masqueradeNotFrom } : {}),
  };
}

/**
 * A stored service as a node's agent programs it: marked as the cluster's, and
 * masqueraded from outside the cluster's (IPv4) `network` unless it says
 * otherwise, as kube-proxy masquerades from outside the cluster CIDR. An IPv6
 * service keeps what it says: the network is IPv4 (flannel's schema).
 */
export function asProgrammed(s: Service, network: string): Service {
  const masq = s.masqueradeNotFrom ?? (familyOf(s.vip) === 4 ? network : undefined);
  return { ...s, ...(masq !== undefined ? { masqueradeNotFrom: masq } : {}), origin: 'cluster' };
}

/** Whether a node's copy (NAT state, origin "cluster") is the stored service as the agent programs it. */
export const programmedAs = (here: Service, stored: Service, network: string): boolean =>
  sameService(here, asProgrammed(stored, network));

/** How a node's cluster services stand against the store: missing, other than stored, or gone from the store. */
export function serviceLag(
  stored: readonly Service[],
  here: readonly Service[],
  network: string,
): { missing: Service[]; stale: Service[]; extra: Service[] } {
  const mine = new Map(here.filter(isCluster).map((s) => [s.name, s]));
  const names = new Set(stored.map((s) => s.name));
  return {
    missing: stored.filter((s) => !mine.has(s.name)),
    stale: stored.filter((s) => mine.has(s.name) && !programmedAs(mine.get(s.name)!, s, network)),
    extra: [...mine.values()].filter((s) => !names.has(s.name)),
  };
}

export class ServiceStore {
  readonly servicesPrefix: string;
  readonly vipsPrefix: string;

  constructor(readonly store: ClusterStore) {
    this.servicesPrefix = `${store.prefix}/services/`;
    this.vipsPrefix = `${store.prefix}/vips/`;
  }

  private get client() {
    return this.store.client;
  }

  serviceKey = (name: string): string => this.servicesPrefix + qualifiedName(name);
  vipKeyOf = (s: Pick<Service, 'vip' | 'port' | 'proto'>): string => this.vipsPrefix + vipKey(s);

  /** Every cluster service, by name, and the revision they were read at. */
  async list(): Promise<{ revision: string; services: Service[] }> {
    const res = await this.store.bounded(
      'listing cluster services',
      this.client.getAll().prefix(this.servicesPrefix).exec(),
    );
    const services: Service[] = [];
    for (const kv of res.kvs) {
      const s = this.parse(kv.key.toString(), kv.value.toString());
      if (s) services.push(s);
    }
    return { revision: res.header.revision, services };
  }

  /** A stored value, or undefined when it is not a service (it is then never programmed). */
  parse(key: string, value: string): Service | undefined {
    try {
      const s = storedService(JSON.parse(value) as Service);
      return this.servicesPrefix + s.name === key ? s : undefined;
    } catch {
      return undefined;
    }
  }

  async get(name: string): Promise<{ service: Service; mod: number } | undefined> {
    const key = this.serviceKey(name);
    const res = await this.store.bounded(`reading ${key}`, this.client.get(key).exec());
    const kv = res.kvs[0];
    const s = kv && this.parse(key, kv.value.toString());
    return s && kv ? { service: s, mod: Number(kv.mod_revision) } : undefined;
  }

  /** The service that holds a VIP:port/proto, through its claim ([] when none does). */
  async atVip(v: Pick<Service, 'vip' | 'port' | 'proto'>): Promise<Service[]> {
    const key = this.vipKeyOf(v);
    const owner = await this.store.bounded(`reading ${key}`, this.client.get(key).string());
    const have = owner ? await this.get(owner) : undefined;
    return have ? [have.service] : [];
  }

  /** `service add`: the same one again is a no-op; another under the name, or a VIP held by another, is refused. */
  async add(raw: Service): Promise<'added' | 'same'> {
    const s = storedService(raw);
    const key = this.serviceKey(s.name);
    const vip = this.vipKeyOf(s);
    const res = await this.store.bounded(
      `adding ${key}`,
      this.client
        .if(key, 'Create', '==', 0)
        .and(vip, 'Create', '==', 0)
        .then(this.client.put(key).value(JSON.stringify(s)), this.client.put(vip).value(s.name))
        .commit(),
    );
    if (res.succeeded) return 'added';
    const have = await this.get(s.name);
    if (have && sameService(have.service, s)) return 'same';
    if (have)
      throw invalid(
        `service ${s.name} already exists with other settings: use "service set-endpoints", or "service del" first`,
      );
    const owner = await this.store.bounded(`reading ${vip}`, this.client.get(vip).string());
    throw vipClaimed(vipKey(s), owner ?? '(a service being written)', s.name);
  }

  /** `service set-endpoints`: the service as it is, with new endpoints (compare-and-swap on its revision). */
  async setEndpoints(name: string, endpoints: Endpoint[]): Promise<void> {
    for (;;) {
      const have = await this.get(name);
      if (!have) throw invalid(`no service named ${qualifiedName(name)}`);
      const s = storedService({ ...have.service, endpoints });
      const key = this.serviceKey(s.name);
      const res = await this.store.bounded(
        `updating ${key}`,
        this.client
          .if(key, 'Mod', '==', have.mod)
          .then(this.client.put(key).value(JSON.stringify(s)))
          .commit(),
      );
      if (res.succeeded) return;
    }
  }

  /** `service del`: the service and its claim, in one transaction; a missing one is a no-op (false). */
  async del(name: string): Promise<boolean> {
    const have = await this.get(name);
    if (!have) return false;
    const key = this.serviceKey(have.service.name);
    await this.store.bounded(
      `deleting ${key}`,
      this.client
        .if(key, 'Mod', '==', have.mod)
        .then(this.client.delete().key(key), this.client.delete().key(this.vipKeyOf(have.service)))
        .commit(),
    );
    return true;
  }

  /**
   * `service apply`: the whole set replaced, in as many transactions as it
   * takes, in an order that never removes a service that is in both sets:
   * first the claims the new set gives up, then every new or changed service
   * with its claim, then the services that go.
   */
  async apply(raw: readonly Service[]): Promise<{ put: number; deleted: number; same: number }> {
    const wanted = [...normalizeServices(raw.map(storedService)).byName.values()];
    const { services: current } = await this.list();
    const now = new Map(current.map((s) => [s.name, s]));
    const want = new Map(wanted.map((s) => [s.name, s]));
    const keptVips = new Set(wanted.map((s) => vipKey(s)));
    const changed = wanted.filter((s) => !now.has(s.name) || !sameService(now.get(s.name)!, s));
    const gone = current.filter((s) => !want.has(s.name));
    const release = current.filter(
      (s) => !keptVips.has(vipKey(s)) || (want.has(s.name) && vipKey(want.get(s.name)!) !== vipKey(s)),
    );
    await this.chunks(
      release.map((s) => this.client.delete().key(this.vipKeyOf(s))),
      'releasing VIP claims',
    );
    await this.chunks(
      changed.flatMap((s) => [
        this.client.put(this.serviceKey(s.name)).value(JSON.stringify(s)),
        this.client.put(this.vipKeyOf(s)).value(s.name),
      ]),
      'writing services',
    );
    await this.chunks(
      gone.map((s) => this.client.delete().key(this.serviceKey(s.name))),
      'deleting services',
    );
    return { put: changed.length, deleted: gone.length, same: wanted.length - changed.length };
  }

  private async chunks(ops: Parameters<ReturnType<ClusterStore['client']['if']>['then']>, what: string): Promise<void> {
    for (let i = 0; i < ops.length; i += OPS_PER_TXN) {
      const part = ops.slice(i, i + OPS_PER_TXN);
      // A comparison that always holds: etcd3 builds every transaction from one.
      const res = await this.store.bounded(
        what,
        this.client
          .if(this.servicesPrefix, 'Version', '>', -1)
          .then(...part)
          .commit(),
      );
      if (!res.succeeded) throw new TsnetError(`etcd refused a transaction while ${what}`, { code: 'EIO' });
    }
  }
}
