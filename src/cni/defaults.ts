/**
 * Where the CNI plugins go, where their shim looks for an agent, and how long
 * a call may take: constants, so the CLI can show them without loading the
 * plugins. The agent takes its default socket from here (it serves the shim;
 * the plugins do not know who serves them).
 */
export const DEFAULT_BIN_DIR = '/opt/cni/bin';
export const DEFAULT_CONF_DIR = '/etc/cni/net.d';
export const SHIM_CONF = 'tsnet-cni.conf';
export const EXAMPLE_CONFLIST = '10-tsnet.conflist';
/** How long a call through the agent may take before the shim reports error 11 (runtimes have no deadline of their own for plugins). */
export const DEFAULT_TIMEOUT_MS = 120_000;

/** Longest deadline accepted (a day): beyond it a runtime is hung, not waiting. */
export const MAX_TIMEOUT_MS = 86_400_000;

/** Where the shim looks for an agent, and where the agent listens, unless told otherwise. */
export const DEFAULT_SOCKET = '/run/tsnet/agent.sock';
