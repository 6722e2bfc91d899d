/**
 * tsnet: network plumbing for Linux containers.
 *
 *   import { netns, bridge, attach, nat, forward } from 'tsnet';
 *   const host = netns.current();
 *   const c1 = netns.add('c1');
 *   await bridge.ensure(host, 'br0', { addresses: ['10.88.0.1/16'] });
 *   await attach.attach(host, c1, { bridge: 'br0', address: '10.88.0.2/16' });
 *
 * Every module is a namespace of operations on a NetNs handle (see
 * examples/library for a whole job). Importing does nothing: no file is
 * opened and the native addon loads on first use.
 */
export * as netns from './netns';
export * as link from './link';
export * as addr from './addr';
export * as route from './route';
export * as veth from './veth';
export * as bridge from './bridge';
export * as sysctl from './sysctl';
export * as attach from './attach';
export * as nat from './nat';
export * as forward from './forward';
export * as conntrack from './conntrack';
export * as cni from './cni';
export * as agent from './agent';
export { TsnetError, isExists, isInvalidInput, isNotFound, type TsnetCode } from './errors';
export type { NetNs } from './netns';
