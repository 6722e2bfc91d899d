/**
 * The CNI data model (SPEC.md v1.0/v1.1): network configuration, runtime
 * environment and results, as TypeScript types. Results are kept in 1.x form
 * internally; ./version converts to and from the older shapes.
 */
import type { EnginePool } from '../nat/pool';

/** `CNI_COMMAND` values. */
export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'GC' | 'STATUS';

/** The runtime's side of a call: the CNI_* environment. */
export interface CniEnv {
  command: CniCommand;
  containerId?: string;
  /** Path to the network namespace (/run/netns/X, /proc/PID/ns/net). */
  netns?: string;
  ifname?: string;
  /** CNI_ARGS, parsed ("IgnoreUnknown=1;IP=10.0.0.5"). */
  args: Record<string, string>;
  /** CNI_PATH, split. */
  path: string[];
  /** tsnet's state directory for this call (TSNET_STATE_DIR, else the serving agent's --state-dir), when set. */
  stateDir?: string;
  /** The caller's whole environment: what a delegated plugin inherits. */
  vars: Readonly<Record<string, string | undefined>>;
  /** The NAT engines of the process serving the call (the agent's, resident); a standalone call makes its own. */
  engines?: EnginePool;
}

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol?: string;
  hostIP?: string;
}

/** `runtimeConfig`: what the runtime injects for the capabilities a plugin declares. */
export interface RuntimeConfig {
  portMappings?: PortMapping[];
  ips?: string[];
  mac?: string;
  mtu?: number;
}

export interface Attachment {
  containerID: string;
  ifname: string;
}

/** What every plugin config has. */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  capabilities?: Record<string, boolean>;
  runtimeConfig?: RuntimeConfig;
  prevResult?: unknown;
  ipam?: { type: string; [k: string]: unknown };
  dns?: Dns;
  /** GC (1.1): attachments the runtime still knows. */
  'cni.dev/valid-attachments'?: Attachment[];
  /** The key's name in pre-release 1.1 runtimes. */
  'cni.dev/attachments'?: Attachment[];
  [k: string]: unknown;
}

export interface Interface {
  name: string;
  mac?: string;
  mtu?: number;
  /** The namespace path, for interfaces inside the container. */
  sandbox?: string;
}

export interface IpConfig {
  /** CIDR. */
  address: string;
  gateway?: string;
  /** Index into `interfaces`. */
  interface?: number;
}

export interface RouteResult {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface Dns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface Result {
  cniVersion: string;
  interfaces?: Interface[];
  ips?: IpConfig[];
  routes?: RouteResult[];
  dns?: Dns;
}
