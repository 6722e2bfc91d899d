/**
 * NAT as a library: the engine that keeps a desired state (services, rules,
 * forwards) applied by one backend, the model it is written in, and the
 * backends to choose from.
 *
 *   const nat = new NatEngine({ ns: host, stateDir });
 *   await nat.change([{ kind: 'add-service', service: normalizeService({ name: 'web', vip: '10.96.0.10', port: 80, endpoints: ['10.88.0.2:8080'] }) }]);
 */
export {
  NatEngine,
  type EngineOptions,
  type SyncReport,
  type SyncEvent,
  type NatChange,
  type BackendChoice,
} from './engine';
export { EnginePool } from './pool';
export { neededSysctls } from './sysctls';
export {
  normalizeService,
  normalizeRule,
  normalizeForward,
  normalizeState,
  parseEndpoint,
  parseHostPort,
  emptyState,
  type Service,
  type Endpoint,
  type Proto,
  type NatRule,
  type MasqueradeRule,
  type SnatRule,
  type DnatRule,
  type Forward,
  type SnatMode,
  type DesiredState,
} from './model';
export { parseServicesFile, serviceEntry } from './services-file';
export { BACKENDS, BACKEND_NAMES, BACKEND_CHOICES, parseBackend, type BackendInfo } from './backends';
export type { BackendName, ServiceCounters, Counter } from './backends/types';
