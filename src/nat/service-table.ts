/**
 * The services of a desired state, changed in place in time proportional to
 * the change. Two parts: the snapshot's service lines as read (bytes and
 * their index, ./snapshot-index: parsed only when a change or a question
 * needs a row), and the services changed since (a deletion is a tombstone),
 * in the order they first changed. A table with no snapshot (made from a
 * list, or after warm()) is all changes.
 *
 * Order: the snapshot's rows in place (a changed one with its new value),
 * then the services added since, in the order they were added.
 */
import type { Family } from '../addr/cidr';
import { familyOf, vipKey, type Service } from './model';
import { hash32, type SnapshotIndex } from './snapshot-index';

/** A snapshot's service lines: the bytes read and their index. */
export interface StoredServices {
  bytes: Buffer;
  index: SnapshotIndex;
}

type Counts = { 4: number; 6: number };

export class ServiceTable {
  private stored?: StoredServices;
  /** Services changed since the snapshot (null: deleted), in the order they first changed. */
  private changed = new Map<string, Service | null>();
  /** Which names in `changed` have a row in the snapshot (found once, when first changed). */
  private changedStored = new Set<string>();
  /** Hashes of the names in `changed`, counted: a row whose name hash is not here is unchanged, unparsed. */
  private changedHashes = new Map<number, number>();
  /** VIP key -> name, for the services in `changed`. */
  private changedVips = new Map<string, string>();
  /** Stored rows parsed so far. */
  private parsed = new Map<number, Service>();
  /** Tombstones of services that are not in the snapshot (compact() drops them). */
  private dead = 0;
  private counts: Counts;

  private constructor(stored: StoredServices | undefined, counts: Counts) {
    if (stored) this.stored = stored;
    this.counts = counts;
  }

  /** `vips`: the name of each VIP key among `services` (unique names), when the caller has it; the table takes it over. */
  static of(services: readonly Service[], vips?: Map<string, string>): ServiceTable {
    const t = new ServiceTable(undefined, { 4: 0, 6: 0 });
    if (vips) t.changedVips = vips;
    for (const s of services) {
      if (t.changed.has(s.name)) {
        t.put(s); // a name again: the later one wins, as put() keeps it
        continue;
      }
      // A first name in a table with no snapshot: what put() would do, without its lookups.
      t.changed.set(s.name, s);
      t.enter(s.name, s, !vips);
    }
    return t;
  }

  static stored(stored: StoredServices): ServiceTable {
    const counts: Counts = { 4: 0, 6: 0 };
    for (let k = 0; k < stored.index.count; k++) counts[stored.index.family(k)]++;
    return new ServiceTable(stored, counts);
  }

  private row(k: number): Service {
    let s = this.parsed.get(k);
    if (!s) {
      const [from, to] = this.stored!.index.span(k);
      this.parsed.set(k, (s = JSON.parse(this.stored!.bytes.toString('utf8', from, to)) as Service));
    }
    return s;
  }

  /** The snapshot's row of the service called `name`, if it has one. */
  private storedRow(name: string): number | undefined {
    return this.stored?.index.byName(name).find((k) => this.row(k).name === name);
  }

  get(name: string): Service | undefined {
    const c = this.changed.get(name);
    if (c !== undefined) return c ?? undefined;
    const k = this.storedRow(name);
    return k === undefined ? undefined : this.row(k);
  }

  /** The service that claims VIP key `key` (see model vipKey), if any. */
  owner(key: string): string | undefined {
    const name = this.changedVips.get(key);
    if (name !== undefined) return name;
    for (const k of this.stored?.index.byVip(key) ?? []) {
      const s = this.row(k);
      if (vipKey(s) === key && !this.changed.has(s.name)) return s.name;
    }
    return undefined;
  }

  familyCounts(): Counts {
    return { ...this.counts };
  }

  families(): Family[] {
    return ([4, 6] as const).filter((f) => this.counts[f] > 0);
  }

  /** Sets `name` to `now` (null: deleted), keeping the counts and the VIP index in step. */
  /** `s`, which `name` was, leaves the counts and the VIP map. */
  private leave(name: string, s: Service | undefined): void {
    if (!s) return;
    this.counts[familyOf(s.vip)]--;
    if (this.changedVips.get(vipKey(s)) === name) this.changedVips.delete(vipKey(s));
  }

  /** `s`, which `name` now is, enters the counts, and the VIP map when it is a changed service (`changed`). */
  private enter(name: string, s: Service | undefined, changed: boolean): void {
    if (!s) return;
    this.counts[familyOf(s.vip)]++;
    if (changed) this.changedVips.set(vipKey(s), name);
  }

  private set(name: string, now: Service | null): void {
    this.leave(name, this.get(name));
    if (!this.changed.has(name)) {
      if (this.storedRow(name) !== undefined) this.changedStored.add(name);
      if (this.stored) this.bumpHash(name, 1);
    }
    this.entry(name, now);
    this.enter(name, now ?? undefined, true);
  }

  /** Sets `name`'s entry in `changed`, counting the tombstones compact() may drop (undefined: no entry). */
  private entry(name: string, now: Service | null | undefined): void {
    const droppable = !this.changedStored.has(name);
    if (droppable && this.changed.get(name) === null) this.dead--;
    if (now === undefined) this.changed.delete(name);
    else this.changed.set(name, now);
    if (droppable && now === null) this.dead++;
  }

  private bumpHash(name: string, by: number): void {
    const h = hash32(name);
    const n = (this.changedHashes.get(h) ?? 0) + by;
    if (n > 0) this.changedHashes.set(h, n);
    else this.changedHashes.delete(h);
  }

  put(s: Service): void {
    this.set(s.name, s);
  }

  delete(name: string): boolean {
    if (!this.get(name)) return false;
    this.set(name, null);
    return true;
  }

  /** What `name` is now, as a function that puts it back so (a round's undo). */
  mark(name: string): () => void {
    const had = this.changed.has(name);
    const prev = this.changed.get(name);
    return () => {
      this.leave(name, this.get(name));
      if (had) this.entry(name, prev!);
      else {
        this.entry(name, undefined);
        this.changedStored.delete(name);
        if (this.stored) this.bumpHash(name, -1);
      }
      // Back in the snapshot (not had), its VIP is the index's to find.
      this.enter(name, this.get(name), had && !!prev);
    };
  }

  /** Every service, in order (parses every row not parsed yet: O(state)). */
  list(): Service[] {
    const out: Service[] = [];
    for (const e of this.lines()) out.push(typeof e === 'number' ? this.row(e) : e);
    return out;
  }

  /**
   * The services in order: a changed one as the service it is now, an
   * unchanged one as its row in the snapshot (a number: still unparsed).
   */
  *lines(): Generator<Service | number> {
    const index = this.stored?.index;
    for (let k = 0; index && k < index.count; k++) {
      // A name hash no change has: the row is unchanged, known without parsing it.
      if (!this.changedHashes.has(index.nameHash(k))) {
        yield k;
        continue;
      }
      const c = this.changed.get(this.row(k).name);
      if (c === undefined) yield k;
      else if (c) yield c;
    }
    for (const [name, s] of this.changed) if (s && !this.changedStored.has(name)) yield s;
  }

  /** The snapshot's lines the rows of lines() are in. */
  get snapshot(): StoredServices | undefined {
    return this.stored;
  }

  /**
   * For each address, whether a service not named in `except` has an
   * endpoint there: stored rows found through the index's addresses, and
   * only those parsed.
   */
  endpointUsed(except: ReadonlySet<string>, ips: readonly string[]): boolean[] {
    return ips.map((ip) => {
      const uses = (s: Service | null | undefined) =>
        !!s && !except.has(s.name) && s.endpoints.some((e) => e.ip === ip);
      for (const s of this.changed.values()) if (uses(s)) return true;
      return (this.stored?.index.byIp(ip) ?? []).some((k) => {
        const s = this.row(k);
        return !this.changed.has(s.name) && uses(s);
      });
    });
  }

  /**
   * Drops the tombstones of services added since the snapshot (a long-lived
   * process deletes and adds many): called between rounds, never within one,
   * as a round's undo may need them.
   */
  compact(): void {
    if (this.dead < 64 || this.dead * 2 < this.changed.size) return;
    for (const [name, s] of [...this.changed]) {
      if (s || this.changedStored.has(name)) continue;
      this.changed.delete(name);
      if (this.stored) this.bumpHash(name, -1);
    }
    this.dead = 0;
  }

  /** Every row parsed and the snapshot let go: a process that keeps the state answers from memory since. */
  warm(): void {
    if (!this.stored) return;
    this.reset(this.list());
  }

  /** The whole set replaced by `services` (in that order); returns what puts the old one back. */
  reset(services: readonly Service[], vips?: Map<string, string>): () => void {
    const old = this.parts();
    this.assign(ServiceTable.of(services, vips).parts());
    return () => this.assign(old);
  }

  private parts() {
    const { stored, changed, changedStored, changedHashes, changedVips, parsed, counts, dead } = this;
    return { stored, changed, changedStored, changedHashes, changedVips, parsed, counts, dead };
  }

  private assign(p: ReturnType<ServiceTable['parts']>): void {
    Object.assign(this, p);
  }
}
