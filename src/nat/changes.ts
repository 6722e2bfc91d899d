/**
 * Changes to the desired NAT state as data: what a command asks for
 * ("add this service", "these endpoints now"), applied to a state in time
 * proportional to the change, not to the state. The same changes are what
 * the engine's journal records and replays. Each change is validated as it
 * is applied (bad input: nothing is changed); the rules that need the whole
 * state (one VIP per service, one listener per forward port) are kept
 * through indexes, not by scanning.
 */
import { invalid } from '../errors';
import type { Family } from '../addr/cidr';
import {
  familyOf,
  normalizeForward,
  normalizeRule,
  normalizeService,
  normalizeServices,
  normalizeState,
  ruleFamily,
  ruleKey,
  sameForward,
  sameForwards,
  sameRules,
  sameService,
  vipClaimed,
  vipKey,
  type DesiredState,
  type Endpoint,
  type Forward,
  type NatRule,
  type Proto,
  type Service,
} from './model';
import type { StoredRows } from './rows';

export type NatChange =
  /** A service; the same one again is a no-op, another under the same name is refused ("service add"). */
  | { kind: 'add-service'; service: Service }
  /** A service, added or replacing the one of that name. */
  | { kind: 'put-service'; service: Service }
  /** New endpoints for an existing service ("service set-endpoints"). */
  | { kind: 'set-endpoints'; name: string; endpoints: Endpoint[] }
  /** Removes a service; a missing one is a no-op. */
  | { kind: 'delete-service'; name: string }
  /** The whole set of services ("service apply"). */
  | { kind: 'replace-services'; services: Service[] }
  /** A standalone rule (the same again: no-op), or its removal (missing: no-op). */
  | { kind: 'add-rule'; rule: NatRule }
  | { kind: 'delete-rule'; rule: NatRule }
  /** A forward, added or replacing the one of that name; its removal (missing: no-op). */
  | { kind: 'put-forward'; forward: Forward }
  | { kind: 'delete-forward'; name: string }
  /** Anything else: the whole desired state at once. */
  | { kind: 'set-state'; state: DesiredState };

/** Every kind of change (what a request from another process may ask for). */
export const NAT_OPS = [
  'add-service',
  'put-service',
  'set-endpoints',
  'delete-service',
  'replace-services',
  'add-rule',
  'delete-rule',
  'put-forward',
  'delete-forward',
  'set-state',
] as const satisfies readonly NatChange['kind'][];
// Every kind of NatChange is listed above (a new one that is not fails to compile here).
const allOpsListed: Exclude<NatChange['kind'], (typeof NAT_OPS)[number]> extends never ? true : never = true;
void allOpsListed;

/**
 * A change as any release wrote it: until 0.1.0's restructure its
 * discriminant was `op` (journal lines, an older CLI's request to the
 * agent); today it is `kind`, as everywhere else. Contents are checked
 * where the change is applied.
 */
export function readChange(x: unknown): NatChange {
  if (typeof x === 'object' && x !== null) {
    const c = x as { kind?: unknown; op?: unknown };
    if (typeof c.kind === 'string') return x as NatChange;
    if (typeof c.op === 'string') {
      const { op, ...rest } = c;
      return { kind: op, ...rest } as NatChange;
    }
  }
  throw invalid(`not a NAT change: ${JSON.stringify(x)?.slice(0, 80)}`);
}

/** A service before and after one round of changes (absent: added, or removed). */
export interface ServiceDelta {
  old?: Service;
  new?: Service;
}

/**
 * What a service must look like to pass a test, stated so that a stored row
 * can be ruled out from its text without parsing it (see ServiceRows.anyOther).
 */
export interface ServiceHint {
  proto?: Proto;
  /** The number of endpoints. */
  endpoints?: number;
  /** An endpoint's address. */
  endpointIp?: string;
}

/**
 * A service: parsed, or the number of its row in the trusted snapshot
 * (StoredRows: the exact JSON text tsnet wrote, digest checked), parsed when
 * first read. A command that changes one service of ten thousand parses one.
 */
type Row = Service | number;

/**
 * A test of stored rows: whether row k can satisfy any of `hints`, read from
 * its text without parsing it (no false negatives). Endpoint addresses, the
 * common question, are searched for in the stored bytes all at once.
 */
function rowsFilter(stored: StoredRows, hints: readonly ServiceHint[]): (k: number) => boolean {
  if (hints.every((h) => h.endpointIp !== undefined && h.proto === undefined && h.endpoints === undefined)) {
    const rows = stored.containing(hints.map((h) => `{"ip":${JSON.stringify(h.endpointIp)}`));
    return (k) => rows.has(k);
  }
  const one = hints.map((hint) => {
    const proto = hint.proto && `"proto":"${hint.proto}"`;
    const ip = hint.endpointIp && `{"ip":"${hint.endpointIp}"`;
    const count = hint.endpoints;
    return (row: string) => {
      if (proto && !row.includes(proto)) return false;
      if (ip && !row.includes(ip)) return false;
      if (count !== undefined) {
        let n = 0;
        for (let at = row.indexOf('{"ip":"'); at >= 0; at = row.indexOf('{"ip":"', at + 7)) n++;
        if (n !== count) return false;
      }
      return true;
    };
  });
  return (k) => {
    const row = stored.text(k);
    return one.some((f) => f(row));
  };
}

/**
 * The services in order, by name and by VIP:port/proto. The indexes are
 * built when first needed: until then, while the stored rows keep their
 * places, a name is found by searching the stored bytes.
 */
class ServiceRows {
  /** name -> position */
  private nameIndex?: Map<string, number>;
  /** VIP:port/proto -> the service that claims it; built when first needed (a change that keeps every VIP never needs it). */
  private vipIndex?: Map<string, string>;
  /** How many services there are per family of their VIP, counted when first asked and kept since. */
  private perFamily?: { 4: number; 6: number };
  /** Whether rows[k] is still stored row k's place for every stored row (no removal or replacement since loading). */
  private inPlace: boolean;
  /** Every row parsed and every name indexed (warm()), until the rows are replaced. */
  private warmed = false;
  /** While in place: names searched for in the stored rows -> their row (-1: not stored). */
  private readonly found = new Map<string, number>();

  constructor(
    public rows: Row[],
    private readonly stored?: StoredRows,
    families?: { 4: number; 6: number },
  ) {
    this.inPlace = stored !== undefined;
    if (families) this.perFamily = { ...families };
  }

  private nameOf(r: Row): string {
    return typeof r === 'number' ? this.stored!.name(r) : r.name;
  }

  private familyOfRow(r: Row): Family {
    return typeof r === 'number' ? (this.stored!.isV6(r) ? 6 : 4) : familyOf(r.vip);
  }

  /** The position of the service called `name`, or undefined. */
  position(name: string): number | undefined {
    if (this.nameIndex) return this.nameIndex.get(name);
    if (this.inPlace) {
      let k = this.found.get(name);
      if (k === undefined) this.found.set(name, (k = this.stored!.find(name)));
      if (k >= 0) return k;
      // Not stored: appended since loading, if at all.
      for (let i = this.stored!.count; i < this.rows.length; i++) if ((this.rows[i] as Service).name === name) return i;
      return undefined;
    }
    return this.names().get(name);
  }

  /** name -> position, built when first needed and kept in step since. */
  private names(): Map<string, number> {
    if (!this.nameIndex) {
      this.nameIndex = new Map();
      for (let i = 0; i < this.rows.length; i++) this.nameIndex.set(this.nameOf(this.rows[i]!), i);
    }
    return this.nameIndex;
  }

  /** How many services have an IPv4 and an IPv6 VIP. */
  get familyCounts(): { 4: number; 6: number } {
    if (!this.perFamily) {
      this.perFamily = { 4: 0, 6: 0 };
      for (const r of this.rows) this.perFamily[this.familyOfRow(r)]++;
    }
    return this.perFamily;
  }

  /** Appends a service (its name indexed, its family counted, when they are kept). */
  push(s: Service): void {
    this.nameIndex?.set(s.name, this.rows.length);
    this.rows.push(s);
    if (this.perFamily) this.perFamily[familyOf(s.vip)]++;
  }

  /** Takes back the last push. */
  pop(): void {
    const s = this.at(this.rows.length - 1);
    this.rows.pop();
    this.nameIndex?.delete(s.name);
    if (this.perFamily) this.perFamily[familyOf(s.vip)]--;
  }

  /** Replaces the service at `i` (same name). */
  set(i: number, s: Service): void {
    if (this.perFamily) {
      this.perFamily[familyOf(this.at(i).vip)]--;
      this.perFamily[familyOf(s.vip)]++;
    }
    this.rows[i] = s;
  }

  get vips(): Map<string, string> {
    if (!this.vipIndex) {
      this.vipIndex = new Map();
      for (const r of this.rows)
        this.vipIndex.set(vipKey(typeof r === 'number' ? this.stored!.vipPortProto(r) : r), this.nameOf(r));
    }
    return this.vipIndex;
  }

  /** Keeps the VIP index in step, when it was built (else it is built from the rows when needed). */
  claim(key: string, name: string): void {
    this.vipIndex?.set(key, name);
  }

  unclaim(key: string): void {
    this.vipIndex?.delete(key);
  }

  at(i: number): Service {
    const r = this.rows[i]!;
    if (typeof r !== 'number') return r;
    const s = JSON.parse(this.stored!.text(r)) as Service;
    this.rows[i] = s;
    return s;
  }

  get(name: string): Service | undefined {
    const i = this.position(name);
    return i === undefined ? undefined : this.at(i);
  }

  /** Parses every row and indexes every name: what a resident process does once, so each later change costs map lookups, not searches of the stored bytes. */
  warm(): void {
    if (this.warmed) return;
    this.all();
    this.names();
    this.warmed = true;
  }

  /** Every service, parsed (the array itself: it stays the state's array). */
  all(): Service[] {
    for (let i = 0; i < this.rows.length; i++) if (typeof this.rows[i] === 'number') this.at(i);
    return this.rows as Service[];
  }

  /** New rows in place of the old (positions moved: the indexes are rebuilt when next needed). */
  replace(rows: Row[]): void {
    this.rows = rows;
    this.inPlace = false;
    this.warmed = false;
    this.found.clear();
    this.nameIndex = undefined;
    this.vipIndex = undefined;
    this.perFamily = undefined;
  }

  /** The rows as JSON lines, stored texts as they are, one at a time. */
  *texts(): Generator<string> {
    for (const r of this.rows) yield typeof r === 'number' ? this.stored!.text(r) : JSON.stringify(r);
  }

  families(): Family[] {
    const n = this.familyCounts;
    return ([4, 6] as const).filter((f) => n[f] > 0);
  }

  /**
   * For each query, whether a service not named in `except` passes its
   * test, in one pass over the rows. Stored rows that can match no
   * query's hint are skipped unparsed; the pass ends when every query has
   * its answer.
   */
  anyOther(except: ReadonlySet<string>, queries: readonly ServiceQuery[]): boolean[] {
    const found = queries.map(() => false);
    let open = queries.length;
    if (!open) return found;
    const skip = new Set<number>();
    for (const n of except) {
      const i = this.position(n);
      if (i !== undefined) skip.add(i);
    }
    // Made at the first stored row met: rows all parsed (a resident process) search no bytes.
    let filter: ((k: number) => boolean) | undefined;
    const mayMatch = (k: number) =>
      (filter ??= rowsFilter(
        this.stored!,
        queries.map((q) => q.hint),
      ))(k);
    for (let i = 0; i < this.rows.length && open; i++) {
      if (skip.has(i)) continue;
      const r = this.rows[i]!;
      if (typeof r === 'number' && !mayMatch(r)) continue;
      const s = this.at(i);
      queries.forEach((q, k) => {
        if (!found[k] && q.test(s)) {
          found[k] = true;
          open--;
        }
      });
    }
    return found;
  }
}

/** A question about the services: `test`, and what a passing service must look like (`hint`, checked on stored text). */
export interface ServiceQuery {
  hint: ServiceHint;
  test: (s: Service) => boolean;
}

/** What a partial sync may ask of the whole state without reading all of it. */
export interface StateView {
  /** familiesUsed(), from the services' VIPs without parsing them. */
  families(): Family[];
  /** For each query, whether a service not named in `except` passes it (see ServiceRows.anyOther). */
  anyOther(except: ReadonlySet<string>, queries: readonly ServiceQuery[]): boolean[];
}

/** A desired state with the indexes that let a change check it without a scan. */
export class IndexedState implements StateView {
  /** The state; `services` is read on demand (reading it parses every stored service). */
  readonly state: DesiredState;

  private constructor(
    private readonly rows: ServiceRows,
    rules: NatRule[],
    forwards: Forward[],
  ) {
    this.state = {
      get services() {
        return rows.all();
      },
      set services(v: Service[]) {
        rows.replace(v);
      },
      rules,
      forwards,
    };
  }

  static of(state: DesiredState): IndexedState {
    return new IndexedState(new ServiceRows(state.services), state.rules, state.forwards);
  }

  /** A state from stored rows: each service's JSON text as tsnet wrote it (trusted), parsed when read. */
  static fromRows(
    stored: StoredRows,
    rules: NatRule[],
    forwards: Forward[],
    families?: { 4: number; 6: number },
  ): IndexedState {
    const rows: Row[] = new Array<Row>(stored.count);
    for (let k = 0; k < rows.length; k++) rows[k] = k;
    return new IndexedState(new ServiceRows(rows, stored, families), rules, forwards);
  }

  service(name: string): Service | undefined {
    return this.rows.get(name);
  }

  /** Parses and indexes everything now (see ServiceRows.warm): for a process that keeps the state and applies many changes. */
  warm(): this {
    this.rows.warm();
    return this;
  }

  /** The services as JSON lines (unparsed ones as stored), one at a time. */
  serviceTexts(): Generator<string> {
    return this.rows.texts();
  }

  /** How many services have an IPv4 and an IPv6 VIP (the snapshot records it, so loading need not count). */
  familyCounts(): { 4: number; 6: number } {
    return { ...this.rows.familyCounts };
  }

  families(): Family[] {
    const st = this.state;
    const services = this.rows.families();
    return ([4, 6] as const).filter(
      (f) =>
        services.includes(f) ||
        st.rules.some((r) => ruleFamily(r) === f) ||
        st.forwards.some((x) => familyOf(x.targetIp) === f),
    );
  }

  anyOther(except: ReadonlySet<string>, queries: readonly ServiceQuery[]): boolean[] {
    return this.rows.anyOther(except, queries);
  }

  /**
   * Applies `changes` in place, in time proportional to them (no copy of
   * the state: a big table is not cheap to copy). Returns
   * which services changed, whether rules or forwards did, and `undo`, which
   * puts everything back: a refused change (it throws, after undoing the
   * round) or a failed sync leaves the state as it was.
   */
  apply(changes: readonly NatChange[]): RoundResult {
    const r = new Round(this.rows, this.state);
    try {
      for (const c of changes) r.apply(c);
    } catch (err) {
      r.undo();
      throw err;
    }
    return r.finish();
  }
}

/** What one round did: which services changed, whether rules or forwards did, how to undo it, and (built on demand) the state before it. */
export interface RoundResult {
  services: ServiceDelta[];
  global: boolean;
  undo: () => void;
  /** The state before the round, rebuilt (O(state)) for whoever needs both (the iptables backend's append check). */
  before: () => DesiredState;
}

/** One round of changes applied in place, with what undoes them. */
class Round {
  private oldRules?: NatRule[];
  private oldForwards?: Forward[];
  /** name -> the service before this round (null: it did not exist) */
  private readonly touched = new Map<string, Service | null>();
  private readonly undos: (() => void)[] = [];
  private global = false;

  constructor(
    private readonly x: ServiceRows,
    /** For rules and forwards (services go through `x`). */
    private readonly st: DesiredState,
  ) {}

  private current(name: string): Service | undefined {
    return this.x.get(name);
  }

  private remember(name: string): void {
    if (!this.touched.has(name)) this.touched.set(name, this.current(name) ?? null);
  }

  /** remember(), when the caller already holds what `name` is now (null: absent). */
  private rememberAs(name: string, now: Service | null): void {
    if (!this.touched.has(name)) this.touched.set(name, now);
  }

  private put(s: Service): void {
    const x = this.x;
    const i = x.position(s.name);
    const old = i === undefined ? undefined : x.at(i);
    const key = vipKey(s);
    if (!old || vipKey(old) !== key) {
      const owner = x.vips.get(key);
      if (owner !== undefined && owner !== s.name) throw vipClaimed(key, owner, s.name);
    }
    this.remember(s.name);
    if (i === undefined) {
      x.push(s);
      x.claim(key, s.name);
      this.undos.push(() => {
        x.pop();
        x.unclaim(key);
      });
    } else {
      const was = old!;
      x.set(i, s);
      x.unclaim(vipKey(was));
      x.claim(key, s.name);
      this.undos.push(() => {
        x.set(i, was);
        x.unclaim(key);
        x.claim(vipKey(was), was.name);
      });
    }
  }

  private remove(name: string): void {
    const x = this.x;
    const i = x.position(name);
    if (i === undefined) return;
    this.remember(name);
    const old = x.at(i);
    x.rows.splice(i, 1);
    // Positions after it moved down by one: renumber (deletions are the rare change).
    x.replace(x.rows);
    this.undos.push(() => {
      x.rows.splice(i, 0, old);
      x.replace(x.rows);
    });
  }

  private setRules(rules: NatRule[]): void {
    const old = this.st.rules;
    this.oldRules ??= old;
    this.st.rules = rules;
    this.global = true;
    this.undos.push(() => {
      this.st.rules = old;
    });
  }

  private setForwards(forwards: Forward[]): void {
    const old = this.st.forwards;
    this.oldForwards ??= old;
    this.st.forwards = forwards;
    this.global = true;
    this.undos.push(() => {
      this.st.forwards = old;
    });
  }

  apply(c: NatChange): void {
    switch (c.kind) {
      case 'add-service': {
        const s = normalizeService(c.service);
        const have = this.current(s.name);
        if (have && !sameService(have, s))
          throw invalid(
            `service ${s.name} already exists with other settings: use "service set-endpoints", or "service del" first`,
          );
        if (!have) this.put(s);
        break;
      }
      case 'put-service':
        this.put(normalizeService(c.service));
        break;
      case 'set-endpoints': {
        const have = this.current(c.name);
        if (!have) throw invalid(`no service named ${c.name}`);
        this.put(normalizeService({ ...have, endpoints: c.endpoints }));
        break;
      }
      case 'delete-service':
        this.remove(c.name);
        break;
      case 'replace-services': {
        // The whole set at once: checked as a whole (one owner per VIP among the wanted; the others go), then
        // the rows rebuilt in one pass, kept services in their places and new ones last.
        const wanted = normalizeServices(c.services);
        const x = this.x;
        const rows = x.all();
        const next: Service[] = [];
        const kept = new Set<string>();
        let changed = false;
        for (const s of rows) {
          const w = wanted.get(s.name);
          if (w) kept.add(s.name);
          if (w && sameService(w, s)) next.push(s);
          else {
            this.rememberAs(s.name, s);
            if (w) next.push(w);
            changed = true;
          }
        }
        for (const s of wanted.values()) {
          if (kept.has(s.name)) continue;
          this.rememberAs(s.name, null);
          next.push(s);
          changed = true;
        }
        if (changed) {
          x.replace(next);
          this.undos.push(() => x.replace(rows));
        }
        break;
      }
      case 'add-rule': {
        const r = normalizeRule(c.rule);
        if (!this.st.rules.some((x) => ruleKey(x) === ruleKey(r))) this.setRules([...this.st.rules, r]);
        break;
      }
      case 'delete-rule': {
        const k = ruleKey(normalizeRule(c.rule));
        if (this.st.rules.some((x) => ruleKey(x) === k)) this.setRules(this.st.rules.filter((x) => ruleKey(x) !== k));
        break;
      }
      case 'put-forward': {
        const f = normalizeForward(c.forward);
        const same = this.st.forwards.find((x) => x.name === f.name);
        if (same && sameForward(same, f)) break;
        const next = [...this.st.forwards.filter((x) => x.name !== f.name), f];
        // The whole-state checks (one listener per port) are cheap: forwards are few.
        normalizeState({ services: [], rules: [], forwards: next });
        this.setForwards(next);
        break;
      }
      case 'delete-forward':
        if (this.st.forwards.some((x) => x.name === c.name))
          this.setForwards(this.st.forwards.filter((x) => x.name !== c.name));
        break;
      case 'set-state': {
        const st = normalizeState(c.state);
        this.apply({ kind: 'replace-services', services: st.services });
        if (!sameRules(st.rules, this.st.rules)) this.setRules(st.rules);
        if (!sameForwards(st.forwards, this.st.forwards)) this.setForwards(st.forwards);
        break;
      }
    }
  }

  undo(): void {
    for (const u of this.undos.splice(0).reverse()) u();
  }

  finish(): RoundResult {
    const deltas: ServiceDelta[] = [];
    for (const [name, old] of this.touched) {
      const now = this.current(name);
      if (old && now && (old === now || sameService(old, now))) continue;
      const d: ServiceDelta = {};
      if (old) d.old = old;
      if (now) d.new = now;
      if (d.old || d.new) deltas.push(d);
    }
    const before = (): DesiredState => {
      const back = new Map(deltas.map((d) => [(d.new ?? d.old)!.name, d.old]));
      const services: Service[] = [];
      for (const s of this.x.all()) {
        if (!back.has(s.name)) services.push(s);
        else if (back.get(s.name)) services.push(back.get(s.name)!);
      }
      for (const d of deltas) if (d.old && !d.new) services.push(d.old);
      return { services, rules: this.oldRules ?? this.st.rules, forwards: this.oldForwards ?? this.st.forwards };
    };
    return { services: deltas, global: this.global, undo: () => this.undo(), before };
  }
}
