/**
 * The cluster's keys in etcd (v3 API, through the `etcd3` client): the
 * config, the subnet leases, and the leave records that tell a running
 * agent "you were removed" from "your lease expired". The client's fault
 * handling is tuned for a pod network: with its defaults a watch resumes
 * ~18 s after etcd returns (a 5 s circuit breaker and a 30 s backoff);
 * here a breaker half-opens after 500 ms and a watch retries within 1 s.
 * Every call is bounded: a command fails within 5 s with one line naming etcd.
 */
import type { Etcd3, IKeyValue } from 'etcd3';
import type { IBackoff } from 'cockatiel';
import { TsnetError, invalid } from '../errors';
import {
  DEFAULT_PREFIX,
  leaseNodeName,
  parseConfig,
  parseSubnetKey,
  subnetKey,
  type ClusterConfig,
  type LeaseValue,
  type Subnet,
} from './config';

export const CALL_TIMEOUT_MS = 5000;

/** `--etcd URLS` (comma-separated), checked. */
export function parseEndpoints(text: string): string[] {
  const urls = text
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  if (urls.length === 0) throw invalid('--etcd needs at least one URL, like http://127.0.0.1:2379');
  for (const u of urls) {
    let ok = false;
    try {
      const p = new URL(u);
      ok = (p.protocol === 'http:' || p.protocol === 'https:') && p.port !== '';
    } catch {
      ok = false;
    }
    if (!ok) throw invalid(`invalid etcd URL ${JSON.stringify(u)}: expected http://HOST:PORT`);
  }
  return urls;
}

/** `--prefix`, checked: absolute, no trailing slash. */
export function parsePrefix(text: string | undefined): string {
  const p = (text ?? DEFAULT_PREFIX).replace(/\/+$/, '');
  if (!p.startsWith('/') || p.length < 2)
    throw invalid(`invalid --prefix ${JSON.stringify(text)}: expected a key path like /tsnet/network`);
  return p;
}

const str = (b: Buffer | string | undefined): string => (b === undefined ? '' : b.toString());

/** One node's lease as stored. */
export interface StoredLease {
  key: string;
  subnet: Subnet;
  value: string;
  lease: string;
  modRevision: string;
}

export class ClusterStore {
  readonly configKey: string;
  readonly subnetsPrefix: string;
  readonly leavesPrefix: string;

  /** Connects (lazily: the first call dials). etcd3 is loaded here, not at import: it reads its .proto files as it loads. */
  static async open(endpoints: string[], prefix: string = DEFAULT_PREFIX): Promise<ClusterStore> {
    const { Etcd3, isRecoverableError } = await import('etcd3');
    const { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } = await import('cockatiel');
    const client = new Etcd3({
      hosts: endpoints,
      dialTimeout: 2000,
      faultHandling: {
        host: () =>
          circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 500, breaker: new ConsecutiveBreaker(3) }),
        global: retry(handleWhen(isRecoverableError), { maxAttempts: 2 }),
        // etcd3 types this as an IBackoff but calls .next() on it first: a factory is what it wants.
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }) as unknown as IBackoff<unknown>,
      },
    });
    return new ClusterStore(client, endpoints, prefix);
  }

  private constructor(
    readonly client: Etcd3,
    readonly endpoints: string[],
    readonly prefix: string,
  ) {
    this.configKey = `${prefix}/config`;
    this.subnetsPrefix = `${prefix}/subnets/`;
    this.leavesPrefix = `${prefix}/leaves/`;
  }

  /** `p`, or a one-line error naming etcd after CALL_TIMEOUT_MS (or the client's own failure). */
  async bounded<T>(what: string, p: Promise<T>, ms = CALL_TIMEOUT_MS): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const where = this.endpoints.join(',');
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new TsnetError(`etcd at ${where} did not answer within ${ms / 1000} s (${what})`, { code: 'ETIMEDOUT' }),
          ),
        ms,
      );
    });
    try {
      return await Promise.race([p, timeout]);
    } catch (err) {
      if (err instanceof TsnetError) throw err;
      throw new TsnetError(
        `etcd at ${where}: ${what}: ${(err as Error).message.split('\n')[0]!.replace(/\.? *Resolution note:.*$/, '')}`,
        { code: 'EIO' },
      );
    } finally {
      clearTimeout(timer);
      p.catch(() => undefined);
    }
  }

  async readConfig(): Promise<ClusterConfig | undefined> {
    const text = await this.bounded('reading the cluster config', this.client.get(this.configKey).string());
    return text === null ? undefined : parseConfig(text, this.configKey);
  }

  /**
   * Writes the config. An equal config already there is success ('same'); a
   * different one is refused unless `force` (and the compare-and-swap keeps
   * two writers from both believing they won).
   */
  async writeConfig(c: ClusterConfig, force: boolean): Promise<'written' | 'same'> {
    const text = JSON.stringify(c);
    const old = await this.bounded('reading the cluster config', this.client.get(this.configKey).string());
    if (old !== null && !force) {
      let same = false;
      try {
        same = JSON.stringify(parseConfig(old, this.configKey)) === text;
      } catch {
        same = false;
      }
      if (same) return 'same';
      throw new TsnetError(`a different cluster config is at ${this.configKey}: ${old.trim()} (--force replaces it)`, {
        code: 'EEXIST',
      });
    }
    await this.bounded('writing the cluster config', this.client.put(this.configKey).value(text).exec());
    return 'written';
  }

  /** Every subnet lease, and the revision they were read at (the watch starts after it). */
  async listLeases(): Promise<{ revision: string; leases: StoredLease[] }> {
    const res = await this.bounded('listing subnet leases', this.client.getAll().prefix(this.subnetsPrefix).exec());
    const leases: StoredLease[] = [];
    for (const kv of res.kvs) {
      const l = this.stored(kv);
      if (l) leases.push(l);
    }
    return { revision: res.header.revision, leases };
  }

  /** A key-value as a lease; undefined for a key that names no subnet. */
  stored(kv: IKeyValue): StoredLease | undefined {
    const key = str(kv.key).slice(this.subnetsPrefix.length);
    const subnet = parseSubnetKey(key);
    if (!subnet) return undefined;
    return { key, subnet, value: str(kv.value), lease: String(kv.lease ?? '0'), modRevision: String(kv.mod_revision) };
  }

  /**
   * Claims `subnet` under `lease`: created if nobody holds it, or re-attached
   * if its value names `node` (a restart, a lease the client gave up on).
   * False when another node holds it.
   */
  async claim(subnet: Subnet, value: LeaseValue, lease: string): Promise<boolean> {
    const key = this.subnetsPrefix + subnetKey(subnet);
    const text = JSON.stringify(value);
    const created = await this.bounded(
      `claiming ${key}`,
      this.client.if(key, 'Create', '==', 0).then(this.client.put(key).value(text).lease(lease)).commit(),
    );
    if (created.succeeded) return true;
    const cur = await this.bounded(`reading ${key}`, this.client.get(key).exec());
    const kv = cur.kvs[0];
    if (!kv) return this.claim(subnet, value, lease);
    if (leaseNodeName(str(kv.value)) !== value.NodeName) return false;
    // Ours: re-attach under the new lease, unless someone changed it meanwhile.
    const swapped = await this.bounded(
      `re-attaching ${key}`,
      this.client
        .if(key, 'Mod', '==', Number(kv.mod_revision))
        .then(this.client.put(key).value(text).lease(lease))
        .commit(),
    );
    return swapped.succeeded;
  }

  /**
   * `cluster leave NODE`: records the leave and deletes the node's lease in
   * one transaction. Returns the subnet it held, or undefined (no such node).
   */
  async leave(node: string): Promise<StoredLease | undefined> {
    const { leases } = await this.listLeases();
    const mine = leases.find((l) => leaseNodeName(l.value) === node);
    if (!mine) return undefined;
    await this.bounded(
      `removing ${node}'s lease`,
      this.client
        .if(this.subnetsPrefix + mine.key, 'Mod', '==', Number(mine.modRevision))
        .then(
          this.client
            .put(this.leavesPrefix + node)
            .value(JSON.stringify({ subnet: mine.key, at: new Date().toISOString() })),
          this.client.delete().key(this.subnetsPrefix + mine.key),
        )
        .commit(),
    );
    return mine;
  }

  /** Whether a leave is recorded for `node`. */
  async leaveRecorded(node: string): Promise<boolean> {
    return (await this.bounded('reading leave records', this.client.get(this.leavesPrefix + node).string())) !== null;
  }

  async clearLeave(node: string): Promise<void> {
    await this.bounded(
      'clearing a leave record',
      this.client
        .delete()
        .key(this.leavesPrefix + node)
        .exec(),
    );
  }

  /** Seconds left on lease `id` (-1: expired or none). */
  async ttlLeft(id: string): Promise<number> {
    if (id === '0') return -1;
    const r = await this.bounded('reading a lease', this.client.leaseClient.leaseTimeToLive({ ID: id }));
    return Number(r.TTL);
  }

  close(): void {
    this.client.close();
  }
}
