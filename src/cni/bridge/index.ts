/**
 * tsnet-bridge: the reference `bridge` plugin's job as library calls
 * (config + env in, result or CniError out), so the standalone binary and a
 * resident agent run the same code (../plugin invoke() calls these). One
 * file per job:
 *
 *   config.ts      the network config (the reference's options, natBackend, stateDir)
 *   add.ts         ADD as named steps, undone from the attachment record on failure, over
 *   host.ts          the bridge, the veth pair, the gateway, the wait for the port to forward
 *   container.ts     inside the container: the checks, addresses and routes
 *   nat.ts           masquerade and port mappings through the NAT engine
 *   ipam-step.ts     the IPAM plugin, in process (tsnet-ipam) or executed from CNI_PATH
 *   attachment.ts    names derived from the attachment, its new record, the container's namespace
 *   teardown.ts    DEL and GC: removing what a record says was made
 *   check.ts       CHECK against prevResult
 *   status.ts      STATUS
 *
 * Everything ADD creates is written to an attachment record first (see
 * ../records), so a failed ADD, a DEL, or a GC after a crash removes exactly
 * that, even when the container's namespace is gone.
 */
export { parseBridgeConf, type BridgeConf } from './config';
export { hostVethName } from './attachment';
export { portForwards } from './nat';
export { bridgeAdd } from './add';
export { bridgeDel, bridgeGc } from './teardown';
export { bridgeCheck } from './check';
export { bridgeStatus } from './status';
