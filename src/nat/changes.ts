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
import {
  normalizeForward, normalizeRule, normalizeService, normalizeState, ruleKey,
  type DesiredState, type Endpoint, type Forward, type NatRule, type Service,
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

/** A desired state with the indexes that let a change check it without a scan. */
export class IndexedState {
  private constructor(
    readonly state: DesiredState,
    /** service name -> its position in state.services */
    private names: Map<string, number>,
    /** VIP:port/proto -> the service that claims it */
    private readonly vips: Map<string, string>,
  ) {}

  static of(state: DesiredState): IndexedState {
    return new IndexedState(state, new Map(state.services.map((s, i) => [s.name, i])), new Map(state.services.map((s) => [vipKey(s), s.name])));
  }

  service(name: string): Service | undefined {
    const i = this.names.get(name);
    return i === undefined ? undefined : this.state.services[i];
  }

  /**
   * Applies `changes` in place, in time proportional to them (no copy of
   * the state: 10,000 services would cost milliseconds to copy). Returns
   * which services changed, whether rules or forwards did, and `undo`, which
   * puts everything back: a refused change (it throws, after undoing the
   * round) or a failed sync leaves the state as it was.
   */
  apply(changes: readonly NatChange[]): RoundResult {
    const r = new Round(this, this.state, this.names, this.vips, (names) => { this.names = names; });
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
    private readonly x: IndexedState,
    private readonly st: DesiredState,
    private names: Map<string, number>,
    private readonly vips: Map<string, string>,
    private readonly setNames: (m: Map<string, number>) => void,
  ) {}

  private current(name: string): Service | undefined {
    const i = this.names.get(name);
    return i === undefined ? undefined : this.st.services[i];
  }

  private remember(name: string): void {
    if (!this.touched.has(name)) this.touched.set(name, this.current(name) ?? null);
  }

  private claim(s: Service, remove?: Service): void {
    if (remove) this.vips.delete(vipKey(remove));
    this.vips.set(vipKey(s), s.name);
  }

  private put(s: Service): void {
    const claimed = this.vips.get(vipKey(s));
    if (claimed !== undefined && claimed !== s.name) throw invalid(`services ${claimed} and ${s.name} both claim ${vipKey(s)}`);
    this.remember(s.name);
    const i = this.names.get(s.name);
    if (i === undefined) {
      this.names.set(s.name, this.st.services.length);
      this.st.services.push(s);
      this.claim(s);
      this.undos.push(() => { this.st.services.pop(); this.names.delete(s.name); this.vips.delete(vipKey(s)); });
    } else {
      const old = this.st.services[i]!;
      this.st.services[i] = s;
      this.claim(s, old);
      this.undos.push(() => { this.st.services[i] = old; this.claim(old, s); });
    }
  }

  private remove(name: string): void {
    const i = this.names.get(name);
    if (i === undefined) return;
    this.remember(name);
    const old = this.st.services[i]!;
    this.st.services.splice(i, 1);
    this.vips.delete(vipKey(old));
    // Positions after it moved down by one: renumber (deletions are the rare change).
    const before = this.names;
    this.names = new Map(this.st.services.map((s, k) => [s.name, k]));
    this.setNames(this.names);
    this.undos.push(() => { this.st.services.splice(i, 0, old); this.names = before; this.setNames(before); this.vips.set(vipKey(old), name); });
  }

  private setRules(rules: NatRule[]): void {
    const old = this.st.rules;
    this.oldRules ??= old;
    this.st.rules = rules;
    this.global = true;
    this.undos.push(() => { this.st.rules = old; });
  }

  private setForwards(forwards: Forward[]): void {
    const old = this.st.forwards;
    this.oldForwards ??= old;
    this.st.forwards = forwards;
    this.global = true;
    this.undos.push(() => { this.st.forwards = old; });
  }

  apply(c: NatChange): void {
    switch (c.op) {
      case 'add-service': {
        const s = normalizeService(c.service);
        const have = this.current(s.name);
        if (have && JSON.stringify(have) !== JSON.stringify(s)) throw invalid(`service ${s.name} already exists with other settings: use "service set-endpoints", or "service del" first`);
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
        const gone = this.st.services.filter((s) => !wanted.has(s.name));
        if (gone.length) {
          // One pass instead of one renumbering per removed service.
          for (const s of gone) this.remember(s.name);
          const services = this.st.services;
          const before = this.names;
          const kept = services.filter((s) => wanted.has(s.name));
          for (const s of gone) this.vips.delete(vipKey(s));
          this.st.services = kept;
          this.names = new Map(kept.map((s, k) => [s.name, k]));
          this.setNames(this.names);
          this.undos.push(() => { this.st.services = services; this.names = before; this.setNames(before); for (const s of gone) this.vips.set(vipKey(s), s.name); });
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
    void this.x;
    const before = (): DesiredState => {
      const back = new Map(deltas.map((d) => [(d.new ?? d.old)!.name, d.old]));
      const services: Service[] = [];
      for (const s of this.st.services) {
        if (!back.has(s.name)) services.push(s);
        else if (back.get(s.name)) services.push(back.get(s.name)!);
      }
      for (const d of deltas) if (d.old && !d.new) services.push(d.old);
      return { services, rules: this.oldRules ?? this.st.rules, forwards: this.oldForwards ?? this.st.forwards };
    };
    return { services: deltas, global: this.global, undo: () => this.undo(), before };
  }
}
