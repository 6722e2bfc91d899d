/**
 * The N-API addon built from native/ by `npm ci` (node-gyp), loaded on first
 * use (never at import: pure modules load without it, and without root).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TsnetError } from './errors';

/** A netlink socket owned by the addon (native/tsnet_native.cc NlSocket). */
export interface NativeNlSocket {
  /** One datagram to the kernel, gathered from `parts` (sendmsg). */
  send(parts: Uint8Array[]): void;
  /** One datagram, then every reply the kernel queued while processing it (overrun: some were lost). */
  transact(parts: Uint8Array[]): { replies: Buffer[]; overrun: boolean };
  /** One datagram, sent from the threadpool: resolves once the kernel has processed it (its replies are then queued). */
  sendAsync(parts: Uint8Array[]): Promise<void>;
  /** Every datagram already queued, without waiting. */
  drain(): { replies: Buffer[]; overrun: boolean };
  close(): void;
  ref(): void;
  unref(): void;
  /** The port the kernel bound us to (nl_pid). */
  port(): number;
  setBuffers(rcv: number, snd: number): void;
  buffers(): { rcv: number; snd: number };
  addMembership(group: number): void;
}

export interface Native {
  /** socket(2) inside the namespace behind nsFd, which must still be the namespace `cookie` names; CLOEXEC. */
  socketIn(nsFd: number, cookie: bigint, domain: number, type: number, protocol: number): number;
  /** open(2) of a regular file inside the namespace behind nsFd (checked like socketIn); CLOEXEC. */
  openIn(nsFd: number, cookie: bigint, path: string, flags: number, mode: number): number;
  /** A new network namespace, bound at `path` unless empty; returns an fd to it. */
  createNetns(path: string): number;
  /** The cookie (SO_NETNS_COOKIE) of the namespace behind nsFd (-1: the caller's); with cookie not 0n, another is EBADF. */
  nsCookie(nsFd: number, cookie: bigint): bigint;
  /** A close-on-exec duplicate of nsFd, checked after the dup to be the namespace `cookie` names. */
  dupChecked(nsFd: number, cookie: bigint): number;
  /** close(2) of an fd the addon made (fs.closeSync warns about those in a Worker). */
  close(fd: number): void;
  /** close(2) on the libuv threadpool, not waited for (a packet socket's close waits for an RCU grace period). */
  closeAsync(fd: number): void;
  /** The namespace helper thread's tid, 0 before its first job. */
  helperTid(): number;
  /** ioctl(NS_GET_NSTYPE): the CLONE_NEW* type of a namespace fd. */
  nsType(fd: number): number;
  NlSocket: new (fd: number, onMessage: (buf: Buffer) => void, onError: (err: Error) => void) => NativeNlSocket;
  /** pipe2(O_CLOEXEC): [readFd, writeFd]. */
  pipe(): [number, number];
  mount(source: string, target: string, fstype: string, flags: number, data?: string): void;
  umount2(target: string, flags: number): void;
  gettid(): number;
  /** sendto(2) on an AF_PACKET SOCK_DGRAM socket: the kernel adds the Ethernet header (device MAC → dstMac). */
  packetSend(fd: number, ifindex: number, ethertype: number, dstMac: Buffer, payload: Buffer): void;
  tryLock(fd: number, exclusive?: boolean): boolean;
  /** SO_PEERCRED of a connected unix socket. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  constants: {
    CLONE_NEWNET: number;
    MS_BIND: number;
    MS_REC: number;
    MS_SHARED: number;
    MNT_DETACH: number;
    AF_NETLINK: number;
    SOCK_RAW: number;
    AF_PACKET: number;
    SOCK_DGRAM: number;
  };
}

/** Package root: the nearest directory above this file with a package.json (dist/src/native.js, src/native.ts, or the CLI bundle dist/bundle/cli.js). */
export const PACKAGE_ROOT = ((): string => {
  for (let d = __dirname; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'package.json'))) return d;
    if (path.dirname(d) === d) return path.resolve(__dirname, '..');
  }
})();

/** A script tsnet runs as a process of its own (the sandbox's inner side, the demo's traffic peer, the forward probe, the CNI plugin): compiled JavaScript under dist/src. */
export const builtScript = (rel: string): string => path.join(PACKAGE_ROOT, 'dist', 'src', rel);

/** The CNI plugin's entry: what the shim runs when no agent serves it. */
export const CNI_ENTRY = builtScript('cni/main.js');

const RELEASE = path.join(PACKAGE_ROOT, 'native', 'build', 'Release');

/** The CNI shim executable (native/cni_shim.c), built next to the addon. */
export const SHIM_PATH = path.join(RELEASE, 'tsnet-cni-shim');

/** The exec helper (native/nsexec.c) that starts a program inside a namespace. */
export const NSEXEC_PATH = path.join(RELEASE, 'tsnet-nsexec');

/** The addon `npm ci` builds (node-gyp). */
const ADDON_PATH = path.join(RELEASE, 'tsnet_native.node');

let loaded: Native | undefined;

export function native(): Native {
  return (loaded ??= loadAddon(ADDON_PATH));
}

/** The addon at `file`; when it does not load, an install error that says what to run (ENOADDON), not a bug. */
export function loadAddon(file: string): Native {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a .node file at a path known only at run time
    return require(file) as Native;
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown };
    // One line: require's own message goes on with its require stack.
    const why = e.code === 'MODULE_NOT_FOUND' ? 'is not built' : `does not load (${String(e.message).split('\n')[0]})`;
    throw new TsnetError(`tsnet's native addon ${why}: ${file}: run \`npm ci\` or \`npm rebuild\` in ${PACKAGE_ROOT}`, {
      code: 'ENOADDON',
      cause: err,
    });
  }
}
