/**
 * The one place where tsnet switches network namespaces.
 *
 * Threading model (read this before touching namespaces anywhere else):
 *
 * - setns(2) moves only the calling thread. Node runs JavaScript on one main
 *   thread, plus libuv's threadpool (fs, dns.lookup, crypto), V8's helper
 *   threads and any Workers. A namespace switch on the main thread is
 *   therefore invisible to the threadpool, and anything the main thread
 *   creates while switched (a socket, a child process, a new thread) belongs
 *   to the namespace it was switched into, for good.
 * - So a switch is only ever a *synchronous* bracket: enter, create what is
 *   needed there (a netlink socket, a child process, an open /proc/sys file),
 *   return, all before the event loop runs again. `inNetns` enforces this: the
 *   callback may not return a promise, and the thread is back in its original
 *   namespace before `inNetns` returns or throws.
 * - Failure modes this prevents: a switched main thread across an `await`
 *   (every later socket lands in the container); `net.connect`,
 *   `server.listen(port, host)` and `dgram.bind`, which create their socket
 *   only after an async lookup (so after the bracket: they would land on the
 *   host, silently); the threadpool or a Worker being born while switched
 *   (its threads would stay in the container forever). Sockets that must live
 *   in a namespace are made by a child process started inside it.
 * - The threadpool is started here at load time, while the thread is
 *   certainly in its own namespace, so no later switch can be the moment it
 *   is born.
 */
import * as fs from 'node:fs';
import { native } from '../native';
import { TsnetError } from '../errors';

const n = native();
const CLONE_NEWNET = n.constants.CLONE_NEWNET;

// libuv opens every fd with O_CLOEXEC, so children never inherit it.
/** This thread's namespace when tsnet was loaded: where every bracket returns to. */
export const originFd: number = fs.openSync('/proc/thread-self/ns/net', fs.constants.O_RDONLY);

// Start libuv's threadpool now, in the origin namespace (see above).
fs.access('/', () => undefined);

let depth = 0;

/**
 * Runs `fn` with the calling thread inside the network namespace behind
 * `nsFd`, and returns the thread to its origin namespace before returning.
 * `fn` must be synchronous: a returned promise is refused.
 */
export function inNetns<T>(nsFd: number, fn: () => T): T {
  if (depth > 0) throw new TsnetError('nested namespace switch refused: inNetns brackets do not nest', { code: 'EBUSY' });
  n.setns(nsFd, CLONE_NEWNET);
  depth++;
  try {
    const result = fn();
    if (result && typeof (result as { then?: unknown }).then === 'function') {
      throw new TsnetError('inNetns callback returned a promise: namespace switches must be synchronous', { code: 'EINVAL' });
    }
    return result;
  } finally {
    depth--;
    n.setns(originFd, CLONE_NEWNET);
  }
}

/** Creates a new network namespace bound at `path` (an existing empty file), as `ip netns add` does. */
export function createNetnsAt(path: string): void {
  if (depth > 0) throw new TsnetError('cannot create a namespace inside an inNetns bracket', { code: 'EBUSY' });
  n.createNetnsAt(path);
}
