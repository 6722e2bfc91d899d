/**
 * Changes to the desired NAT state as data: what a command asks for
 * ("add this service", "these endpoints now"), applied to a state in time
 * proportional to the change, not to the state. The same changes are what
 * the engine's journal records and replays. Each change is validated as it
 * is applied (bad input: nothing is changed); the rules that need the whole
 * state (one VIP per service, one listener per forward port) are kept
 * through indexes, not by scanning.
 */
import { TsnetError, invalid } from '../errors';
import type { Family } from '../addr/cidr';
import {
  familyOf,
  normalizeForward,
  normalizeRule,
  normalizeService,
  normalizeState,
  ruleFamily,
  ruleKey,
  type DesiredState,
  type Endpoint,
  type Forward,
  type NatRule,
  type Proto,
  type Service,
} from './model';

export type NatChange =
  /** A service; the same one again is a no-op, another under the same name is refused ("service add"). */
  | { op: 'add-service'; service: Service }
  /** A service, added or replacing the one of that name. */
  | { op: 'put-service'; service: Service }
  /** New endpoints for an existing service ("service set-endpoints"). */
  | { op: 'set-endpoints'; name: string; endpoints: Endpoint[] }
  /** Removes a service; a missing one is a no-op. */
  | { op: 'delete-service'; name: string }
  /** The whole set of services ("service apply"). */
  | { op: 'replace-services'; services: Service[] }
  /** A standalone rule (the same again: no-op), or its removal (missing: no-op). */
  | { op: 'add-rule'; rule: NatRule }
  | { op: 'delete-rule'; rule: NatRule }
  /** A forward, added or replacing the one of that name; its removal (missing: no-op). */
  | { op: 'put-forward'; forward: Forward }
  | { op: 'delete-forward'; name: string }
  /** Anything else: the whole desired state at once. */
  | { op: 'set-state'; state: DesiredState };

/** A service before and after one round of changes (absent: added, or removed). */
export interface ServiceDelta {
  old?: Service;
  new?: Service;
}

const vipKey = (s: Pick<Service, 'vip' | 'port' | 'proto'>) => `${s.vip}:${s.port}/${s.proto}`;

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
 * A stored service: parsed, or the exact JSON text tsnet wrote for it
 * (trusted: the snapshot's digest matched), parsed when first read. A
 * command that changes one service of ten thousand parses one.
 */
type Row = Service | string;

/** A trusted row begins `{"name":"NAME","vip":"VIP",` (normalizeService's key order). */
const NAME_AT = '{"name":"'.length;
const HEAD = /^\{"name":"([^"\\]*)","vip":"([^"\\]*)","port":(\d+),"proto":"([a-z]+)"/;

function rowName(row: Row): string {
  return typeof row === 'string' ? row.slice(NAME_AT, row.indexOf('"', NAME_AT)) : row.name;
}

function rowVipKey(row: Row): string {
  if (typeof row !== 'string') return vipKey(row);
  const m = HEAD.exec(row);
  if (!m) throw new TsnetError(`stored service row ${row.slice(0, 80)} is not in tsnet's format`, { code: 'EINTERNAL' });
  return `${m[2]}:${m[3]}/${m[4]}`;
}

const escapeRe = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A test of stored rows: whether one can satisfy any of `hints`, read from
 * its text without parsing it (no false negatives). Endpoint addresses, the
 * common question, are looked for all at once.
 */
function rowsFilter(hints: readonly ServiceHint[]): (row: string) => boolean {
  if (hints.every((h) => h.endpointIp !== undefined && h.proto === undefined && h.endpoints === undefined)) {
    const re = new RegExp(`\\{"ip":"(?:${hints.map((h) => escapeRe(h.endpointIp!)).join('|')})"`);
    return (row) => re.test(row);
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
  return (row) => one.some((f) => f(row));
}

/** The services in order, by name and by VIP:port/proto. */
class ServiceRows {
  /** name -> position */
  names: Map<string, number>;
  /** VIP:port/proto -> the service that claims it; built when first needed (a change that keeps every VIP never needs it). */
  private vipIndex?: Map<string, string>;

  constructor(public rows: Row[]) {
    this.names = this.indexNames();
  }

  /** How many services there are per family of their VIP (kept so that families() reads no row). */
  private perFamily = { 4: 0, 6: 0 };

  private indexNames(): Map<string, number> {
    const m = new Map<string, number>();
    this.perFamily = { 4: 0, 6: 0 };
    for (let i = 0; i < this.rows.length; i++) {
      const r = this.rows[i]!;
      if (typeof r !== 'string') {
        m.set(r.name, i);
        this.perFamily[familyOf(r.vip)]++;
        continue;
      }
      const end = r.indexOf('"', NAME_AT);
      m.set(r.slice(NAME_AT, end), i);
      // The VIP follows the name (`","vip":"` is 9 characters): a colon before its closing quote means IPv6.
      let six = false;
      for (let k = end + 9, c = r.charCodeAt(k); c !== 34 && k < r.length; c = r.charCodeAt(++k)) if (c === 58) six = true;
      this.perFamily[six ? 6 : 4]++;
    }
    return m;
  }

  /** Appends a service (its name indexed, its family counted). */
  push(s: Service): void {
    this.names.set(s.name, this.rows.length);
    this.rows.push(s);
    this.perFamily[familyOf(s.vip)]++;
  }

  /** Takes back the last push. */
  pop(): void {
    const s = this.at(this.rows.length - 1);
    this.rows.pop();
    this.names.delete(s.name);
    this.perFamily[familyOf(s.vip)]--;
  }

  /** Replaces the service at `i` (same name). */
  set(i: number, s: Service): void {
    this.perFamily[familyOf(this.at(i).vip)]--;
    this.rows[i] = s;
    this.perFamily[familyOf(s.vip)]++;
  }

  get vips(): Map<string, string> {
    if (!this.vipIndex) {
      this.vipIndex = new Map();
      for (const r of this.rows) this.vipIndex.set(rowVipKey(r), rowName(r));
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
    if (typeof r !== 'string') return r;
    const s = JSON.parse(r) as Service;
    this.rows[i] = s;
    return s;
  }

  get(name: string): Service | undefined {
    const i = this.names.get(name);
    return i === undefined ? undefined : this.at(i);
  }

  /** Every service, parsed (the array itself: it stays the state's array). */
  all(): Service[] {
    for (let i = 0; i < this.rows.length; i++) if (typeof this.rows[i] === 'string') this.at(i);
    return this.rows as Service[];
  }

  replace(rows: Row[]): void {
    this.rows = rows;
    this.names = this.indexNames();
    this.vipIndex = undefined;
  }

  /** The rows as JSON lines, stored texts as they are, one at a time. */
  *texts(): Generator<string> {
    for (const r of this.rows) yield typeof r === 'string' ? r : JSON.stringify(r);
  }

  families(): Family[] {
    return ([4, 6] as const).filter((f) => this.perFamily[f] > 0);
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
      const i = this.names.get(n);
      if (i !== undefined) skip.add(i);
    }
    const mayMatch = rowsFilter(queries.map((q) => q.hint));
    for (let i = 0; i < this.rows.length && open; i++) {
      if (skip.has(i)) continue;
      const r = this.rows[i]!;
      if (typeof r === 'string' && !mayMatch(r)) continue;
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
  static fromRows(rows: string[], rules: NatRule[], forwards: Forward[]): IndexedState {
    return new IndexedState(new ServiceRows(rows), rules, forwards);
  }

  service(name: string): Service | undefined {
    return this.rows.get(name);
  }

  /** The services as JSON lines (unparsed ones as stored), one at a time. */
  serviceTexts(): Generator<string> {
    return this.rows.texts();
  }

  families(): Family[] {
    const st = this.state;
    const services = this.rows.families();
    return ([4, 6] as const).filter(
      (f) => services.includes(f) || st.rules.some((r) => ruleFamily(r) === f) || st.forwards.some((x) => familyOf(x.targetIp) === f),
    );
  }

  anyOther(except: ReadonlySet<string>, queries: readonly ServiceQuery[]): boolean[] {
    return this.rows.anyOther(except, queries);
  }

  /**
   * Applies `changes` in place, in time proportional to them (no copy of
   * the state: 10,000 services would cost milliseconds to copy). Returns
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

  private put(s: Service): void {
    const x = this.x;
    const i = x.names.get(s.name);
    const old = i === undefined ? undefined : x.at(i);
    const key = vipKey(s);
    if (!old || vipKey(old) !== key) {
      const claimed = x.vips.get(key);
      if (claimed !== undefined && claimed !== s.name) throw invalid(`services ${claimed} and ${s.name} both claim ${key}`);
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
    const i = x.names.get(name);
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
    switch (c.op) {
      case 'add-service': {
        const s = normalizeService(c.service);
        const have = this.current(s.name);
        if (have && JSON.stringify(have) !== JSON.stringify(s))
          throw invalid(`service ${s.name} already exists with other settings: use "service set-endpoints", or "service del" first`);
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
        const wanted = new Map<string, Service>();
        for (const raw of c.services) {
          const s = normalizeService(raw);
          if (wanted.has(s.name)) throw invalid(`duplicate service name ${s.name}`);
          wanted.set(s.name, s);
        }
        const x = this.x;
        const rows = x.all();
        const gone = rows.filter((s) => !wanted.has(s.name));
        if (gone.length) {
          // One pass instead of one renumbering per removed service.
          for (const s of gone) this.remember(s.name);
          x.replace(rows.filter((s) => wanted.has(s.name)));
          this.undos.push(() => x.replace(rows));
        }
        for (const s of wanted.values()) {
          const have = this.current(s.name);
          if (!have || JSON.stringify(have) !== JSON.stringify(s)) this.put(s);
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
        if (same && JSON.stringify(same) === JSON.stringify(f)) break;
        const next = [...this.st.forwards.filter((x) => x.name !== f.name), f];
        // The whole-state checks (one listener per port) are cheap: forwards are few.
        normalizeState({ services: [], rules: [], forwards: next });
        this.setForwards(next);
        break;
      }
      case 'delete-forward':
        if (this.st.forwards.some((x) => x.name === c.name)) this.setForwards(this.st.forwards.filter((x) => x.name !== c.name));
        break;
      case 'set-state': {
        const st = normalizeState(c.state);
        this.apply({ op: 'replace-services', services: st.services });
        if (JSON.stringify(st.rules) !== JSON.stringify(this.st.rules)) this.setRules(st.rules);
        if (JSON.stringify(st.forwards) !== JSON.stringify(this.st.forwards)) this.setForwards(st.forwards);
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
      if (old && now && (old === now || JSON.stringify(old) === JSON.stringify(now))) continue;
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
