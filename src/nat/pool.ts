/**
 * The NAT engines of a long-lived process (the agent's), kept by namespace,
 * state directory and backend choice (see EnginePool).
 */
import * as netns from '../netns';
import { stateDir as defaultStateDir } from '../state';
import { NatEngine, type EngineOptions } from './engine';

/**
 * The engines a long-lived process keeps (the agent's): one per namespace,
 * state directory and backend choice, made once, so what each loaded and
 * the indexes of what it wrote stay in memory and every change is applied
 * as a diff (the state is read again only when another process changed the
 * files). Engines of two pools never share anything.
 */
export class EnginePool {
  private readonly byNs = new WeakMap<netns.NetNs, Map<string, NatEngine>>();

  constructor(
    private readonly defaults: Pick<EngineOptions, 'resident' | 'onSync' | 'onLateError' | 'busy' | 'calm'> = {},
  ) {}

  get(opts: EngineOptions = {}): NatEngine {
    const ns = opts.ns ?? netns.current();
    let m = this.byNs.get(ns);
    if (!m) this.byNs.set(ns, (m = new Map()));
    const key = `${defaultStateDir(opts.stateDir)}\0${opts.backend ?? 'auto'}\0${opts.exactDir ? 'exact' : ''}`;
    let e = m.get(key);
    if (!e || e.ns.closed) m.set(key, (e = new NatEngine({ ...this.defaults, ...opts, ns })));
    return e;
  }
}
