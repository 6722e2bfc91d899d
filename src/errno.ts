/**
 * errno numbers, names and texts: one positive-number convention, as errno(3)
 * has it. And signal numbers, from the same lazily loaded node:os: a child's
 * exit status (exitStatus).
 */
import type * as os from 'node:os';

let table: { numbers: Record<string, number>; names: Map<number, string> } | undefined;
/** Node's errno table, loaded on first use: node:os is a measurable share of every CLI start (bench:startup), and errnos are needed only when something failed. */
function errnos(): NonNullable<typeof table> {
  if (!table) {
    const numbers = osConstants().errno as Record<string, number>;
    table = { numbers, names: new Map(Object.entries(numbers).map(([name, num]) => [num, name])) };
  }
  return table;
}

// eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded lazily on purpose (see errnos)
const osConstants = () => (require('node:os') as typeof os).constants;

/** A child's exit status as a shell reports it: its exit code, 128+N when it died of signal N, else 1. */
export function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return signal ? 128 + (osConstants().signals[signal] ?? 0) : 1;
}

/** The errno names Node knows on Linux (os.constants.errno): what a system error's `code` can be (a unit test keeps the two equal). */
// prettier-ignore
export const ERRNO_NAMES = [
  'E2BIG', 'EACCES', 'EADDRINUSE', 'EADDRNOTAVAIL', 'EAFNOSUPPORT', 'EAGAIN', 'EALREADY', 'EBADF', 'EBADMSG', 'EBUSY',
  'ECANCELED', 'ECHILD', 'ECONNABORTED', 'ECONNREFUSED', 'ECONNRESET', 'EDEADLK', 'EDESTADDRREQ', 'EDOM', 'EDQUOT',
  'EEXIST', 'EFAULT', 'EFBIG', 'EHOSTUNREACH', 'EIDRM', 'EILSEQ', 'EINPROGRESS', 'EINTR', 'EINVAL', 'EIO', 'EISCONN',
  'EISDIR', 'ELOOP', 'EMFILE', 'EMLINK', 'EMSGSIZE', 'EMULTIHOP', 'ENAMETOOLONG', 'ENETDOWN', 'ENETRESET', 'ENETUNREACH',
  'ENFILE', 'ENOBUFS', 'ENODATA', 'ENODEV', 'ENOENT', 'ENOEXEC', 'ENOLCK', 'ENOLINK', 'ENOMEM', 'ENOMSG', 'ENOPROTOOPT',
  'ENOSPC', 'ENOSR', 'ENOSTR', 'ENOSYS', 'ENOTCONN', 'ENOTDIR', 'ENOTEMPTY', 'ENOTSOCK', 'ENOTSUP', 'ENOTTY', 'ENXIO',
  'EOPNOTSUPP', 'EOVERFLOW', 'EPERM', 'EPIPE', 'EPROTO', 'EPROTONOSUPPORT', 'EPROTOTYPE', 'ERANGE', 'EROFS', 'ESPIPE',
  'ESRCH', 'ESTALE', 'ETIME', 'ETIMEDOUT', 'ETXTBSY', 'EWOULDBLOCK', 'EXDEV',
] as const;

/** An errno by name; `E<number>` for one Node has no name for (the kernel may return any). */
export type ErrnoName = (typeof ERRNO_NAMES)[number] | `E${number}`;

/** The symbolic name of an errno value (`17` -> `EEXIST`). */
export function errnoName(errno: number): ErrnoName {
  return (errnos().names.get(Math.abs(errno)) as ErrnoName | undefined) ?? `E${Math.abs(errno)}`;
}

/** The number of an errno name (`EEXIST` -> 17), or undefined for names that are not errnos. */
export function errnoNumber(code: string): number | undefined {
  return errnos().numbers[code];
}

/** Whether `code` names an errno (a system error's code, not one of Node's ERR_* or tsnet's own). */
export function isErrnoName(code: string): code is ErrnoName {
  return errnoNumber(code) !== undefined || /^E\d+$/.test(code);
}

// glibc's texts for the errnos rtnetlink actually returns; others fall back to the name.
const TEXT: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  ESRCH: 'No such process',
  EINTR: 'Interrupted system call',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  E2BIG: 'Argument list too long',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EXDEV: 'Invalid cross-device link',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EINVAL: 'Invalid argument',
  ENFILE: 'Too many open files in system',
  ERANGE: 'Numerical result out of range',
  ENOSPC: 'No space left on device',
  ENOTSUP: 'Operation not supported',
  EOPNOTSUPP: 'Operation not supported',
  EAFNOSUPPORT: 'Address family not supported by protocol',
  EADDRINUSE: 'Address already in use',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  ENETDOWN: 'Network is down',
  ENETUNREACH: 'Network is unreachable',
  EHOSTUNREACH: 'No route to host',
  ENOBUFS: 'No buffer space available',
  EMSGSIZE: 'Message too long',
  ELOOP: 'Too many levels of symbolic links',
  ENAMETOOLONG: 'File name too long',
  ENOTEMPTY: 'Directory not empty',
  EPROTONOSUPPORT: 'Protocol not supported',
  ETIMEDOUT: 'Connection timed out',
  ECONNREFUSED: 'Connection refused',
  ECANCELED: 'Operation canceled',
  ESTALE: 'Stale file handle',
  ELIBACC: 'Can not access a needed shared library',
  EPIPE: 'Broken pipe',
  ENOTCONN: 'Transport endpoint is not connected',
  EROFS: 'Read-only file system',
  ENOEXEC: 'Exec format error',
  EPROTO: 'Protocol error',
  EOVERFLOW: 'Value too large for defined data type',
  ENOTSOCK: 'Socket operation on non-socket',
};

/** glibc's text for an errno (`17` -> `File exists`). */
export function strerror(errno: number): string {
  const name = errnoName(errno);
  return TEXT[name] ?? (name in errnos().numbers ? name : `errno ${errno}`);
}
