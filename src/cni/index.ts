/** The CNI plugins as a library: one call per CNI operation, and the installer. */
export { invoke, PLUGINS, type PluginName, type Invocation } from './plugin';
export { bridgeAdd, bridgeDel, bridgeCheck, bridgeGc, bridgeStatus, parseBridgeConf } from './bridge';
export { ipamAdd, ipamDel, ipamCheck, ipamGc, ipamStatus, parseIpamConfig } from './ipam';
export { install, exampleConflist } from './install';
export { CniError, CNI_ERR } from './errors';
export { SUPPORTED_VERSIONS, convertResult, parseResult } from './version';
export type * from './types';
