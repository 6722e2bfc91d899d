/** The node agent: serves the CNI shim and the CLI's NAT changes over a unix socket and keeps NAT rules converged. */
export { DEFAULT_METRICS, DEFAULT_SOCKET } from './protocol';
export { Agent, DEFAULT_RESYNC_MS, nsIdentity, parseDuration, type AgentOptions } from './server';
export * as protocol from './protocol';
export { agentMetrics, type AgentMetrics } from './metrics';
export { agentSocket, changeNat, type NatChangeOptions } from './client';
