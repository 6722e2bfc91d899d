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
  familiesOf,
  normalizeForward,
  normalizeRule,
  normalizeService,
  normalizeServices,
  normalizeState,
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
  type Service,
} from './model';
import { crossesOrigin, isCluster } from './origin';
import { ServiceTable, type StoredServices } from './service-table';

export type NatChange =
  /** A service; the same one again is a no-op, another under the same name is refused ("service add"). */
  | { kind: 'add-service'; service: Service }
  /** A service, added or replacing the one of that name. */
  | { kind: 'put-service'; service: Service }
  /** New endpoints for an existing service ("service set-endpoints"). */
  | { kind: 'set-endpoints'; name: string; endpoints: Endpoint[] }
  /** Removes a service; a missing one is a no-op (origin "cluster": the agent's, which leaves a local one be). */
  | { kind: 'delete-service'; name: string; origin?: 'cluster' }
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

/** A service before and after one round of changes (absent: added, or removed). */
export interface ServiceDelta {
  old?: Service;
  new?: Service;
}

/** What a partial sync may ask of the whole state without reading all of it. */
export interface StateView {
  /** familiesUsed(), from the services' VIPs without parsing them. */
  families(): Family[];
  /** For each address, whether a service not named in `except` has an endpoint there (see ServiceTable). */
  endpointUsed(except: ReadonlySet<string>, ips: readonly string[]): boolean[];
}

/** A desired state whose services may still be lines of the snapshot read: `services()` reads them all (O(state)). */
export interface NatState extends StateView {
  rules: NatRule[];
  forwards: Forward[];
  services(): Service[];
}

/** A desired state with the indexes that let a change check it without a scan. */
export class IndexedState implements NatState {
  private constructor(
    private readonly table: ServiceTable,
    public rules: NatRule[],
    public forwards: Forward[],
  ) {}

  static of(state: DesiredState): IndexedState {
    return new IndexedState(ServiceTable.of(state.services), state.rules, state.forwards);
  }

  /** A state from a snapshot's service lines (trusted: tsnet wrote them), parsed when read. */
  static stored(services: StoredServices, rules: NatRule[], forwards: Forward[]): IndexedState {
    return new IndexedState(ServiceTable.stored(services), rules, forwards);
  }

  service(name: string): Service | undefined {
    return this.table.get(name);
  }

  /** Every service, in order: parses every stored line not parsed yet (O(state)). */
  services(): Service[] {
    return this.table.list();
  }

  /** The whole state as data (O(state)). */
  desired(): DesiredState {
    return { services: this.services(), rules: this.rules, forwards: this.forwards };
  }

  /** Parses and indexes everything now: for a process that keeps the state and applies many changes. */
  warm(): this {
    this.table.warm();
    return this;
  }

  /** The services as snapshot lines (unchanged ones as read). */
  serviceLines(): { lines: Iterable<Service | number>; snapshot?: StoredServices } {
    return { lines: this.table.lines(), snapshot: this.table.snapshot };
  }

  /** How many services have an IPv4 and an IPv6 VIP. */
  familyCounts(): { 4: number; 6: number } {
    return this.table.familyCounts();
  }

  families(): Family[] {
    return familiesOf(this.table.families(), this);
  }

  endpointUsed(except: ReadonlySet<string>, ips: readonly string[]): boolean[] {
    return this.table.endpointUsed(except, ips);
  }

  /**
   * Applies `changes` in place, in time proportional to them (no copy of
   * the state: a big table is not cheap to copy). Returns which services
   * changed, whether rules or forwards did, and `undo`, which puts
   * everything back: a refused change (it throws, after undoing the round)
   * or a failed sync leaves the state as it was.
   */
  apply(changes: readonly NatChange[]): RoundResult {
    this.table.compact();
    const r = new Round(this.table, this);
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
    private readonly x: ServiceTable,
    /** For rules and forwards (services go through `x`). */
    private readonly st: Pick<NatState, 'rules' | 'forwards'>,
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
    const old = this.current(s.name);
    // Local commands and the agent's cluster changes each keep to their own services.
    if (old && isCluster(old) !== isCluster(s)) throw crossesOrigin(old, 'change', s.name);
    const key = vipKey(s);
    if (!old || vipKey(old) !== key) {
      const owner = this.x.owner(key);
      if (owner !== undefined && owner !== s.name) {
        const held = this.current(owner);
        if (held && isCluster(held) !== isCluster(s)) throw crossesOrigin(held, 'vip', s.name);
        throw vipClaimed(key, owner, s.name);
      }
    }
    this.remember(s.name);
    this.undos.push(this.x.mark(s.name));
    this.x.put(s);
  }

  private remove(name: string): void {
    if (!this.current(name)) return;
    this.remember(name);
    this.undos.push(this.x.mark(name));
    this.x.delete(name);
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

  private addService(s: Service): void {
    const have = this.current(s.name);
    if (have && isCluster(have) !== isCluster(s)) throw crossesOrigin(have, 'change', s.name);
    if (have && !sameService(have, s))
      throw invalid(
        `service ${s.name} already exists with other settings: use "service set-endpoints", or "service del" first`,
      );
    if (!have) this.put(s);
  }

  /**
   * The whole set at once: checked as a whole (one owner per VIP among the wanted; the others go), then the
   * table rebuilt in one pass, kept services in their places and new ones last.
   */
  private replaceServices(services: readonly Service[]): void {
    const { byName: wanted, byVip } = normalizeServices(services);
    const cluster = [...wanted.values()].find(isCluster);
    if (cluster) throw invalid(`service ${cluster.name}: a cluster service is not part of a local "service apply"`);
    const next: Service[] = [];
    let changed = false;
    for (const s of this.x.list()) {
      // The cluster's services stay as they are; the local set may not take their names or VIPs.
      if (isCluster(s)) {
        if (wanted.has(s.name)) throw crossesOrigin(s, 'change');
        const owner = byVip.get(vipKey(s));
        if (owner !== undefined) throw crossesOrigin(s, 'vip', owner);
        byVip.set(vipKey(s), s.name);
        next.push(s);
        continue;
      }
      const w = wanted.get(s.name);
      if (w && sameService(w, s)) next.push(s);
      else {
        this.rememberAs(s.name, s);
        if (w) next.push(w);
        changed = true;
      }
      wanted.delete(s.name);
    }
    for (const s of wanted.values()) {
      this.rememberAs(s.name, null);
      next.push(s);
      changed = true;
    }
    if (changed) this.undos.push(this.x.reset(next, byVip));
  }

  private putForward(f: Forward): void {
    const same = this.st.forwards.find((x) => x.name === f.name);
    if (same && sameForward(same, f)) return;
    const next = [...this.st.forwards.filter((x) => x.name !== f.name), f];
    // The whole-state checks (one listener per port) are cheap: forwards are few.
    normalizeState({ services: [], rules: [], forwards: next });
    this.setForwards(next);
  }

  apply(c: NatChange): void {
    switch (c.kind) {
      case 'add-service':
        this.addService(normalizeService(c.service));
        break;
      case 'put-service':
        this.put(normalizeService(c.service));
        break;
      case 'set-endpoints': {
        const have = this.current(c.name);
        if (!have) throw invalid(`no service named ${c.name}`);
        if (isCluster(have)) throw crossesOrigin(have, 'change');
        this.put(normalizeService({ ...have, endpoints: c.endpoints }));
        break;
      }
      case 'delete-service': {
        const have = this.current(c.name);
        if (have && isCluster(have) !== (c.origin === 'cluster')) {
          // The cluster's delete leaves a local service of that name be; a local one may not touch the cluster's.
          if (c.origin === 'cluster') break;
          throw crossesOrigin(have, 'delete');
        }
        this.remove(c.name);
        break;
      }
      case 'replace-services':
        this.replaceServices(c.services);
        break;
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
      case 'put-forward':
        this.putForward(normalizeForward(c.forward));
        break;
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
      for (const s of this.x.list()) {
        if (!back.has(s.name)) services.push(s);
        else if (back.get(s.name)) services.push(back.get(s.name)!);
      }
      for (const d of deltas) if (d.old && !d.new) services.push(d.old);
      return { services, rules: this.oldRules ?? this.st.rules, forwards: this.oldForwards ?? this.st.forwards };
    };
    return { services: deltas, global: this.global, undo: () => this.undo(), before };
  }
}
