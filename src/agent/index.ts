/** The node agent: serves the CNI shim over a unix socket and keeps NAT rules converged. */
export { Agent, DEFAULT_METRICS, DEFAULT_RESYNC_MS, DEFAULT_SOCKET, nsIdentity, parseDuration, type AgentOptions } from './server';
export * as protocol from './protocol';
export { agentMetrics, type AgentMetrics } from './metrics';
