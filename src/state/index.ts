/**
 * The on-disk state store: JSON documents in a state directory, written
 * atomically (temp file, fsync, rename, fsync of the directory) under an
 * flock(2) lock. Concurrent tsnet processes serialize on the lock; a process
 * killed at any point leaves either the old or the new document, never half of
 * one, and its lock dies with it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../native';
import { TsnetError, contextualize, hasCode, isExists, isNotFound } from '../errors';

export const DEFAULT_STATE_DIR = '/var/lib/tsnet';

/** --state-dir, else $TSNET_STATE_DIR, else /var/lib/tsnet. */
export function stateDir(explicit?: string): string {
  return explicit ?? process.env.TSNET_STATE_DIR ?? DEFAULT_STATE_DIR;
}

export function readJson<T>(file: string): T | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw contextualize(`reading ${file}`, err);
  }
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new TsnetError(
      `${file} is not valid JSON (${(err as Error).message}): restore it from a backup or remove it`,
      { code: 'EINVAL' },
    );
  }
}

/** The names in `dir`; none when it does not exist (yet). */
export function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (err) {
    if (isNotFound(err)) return [];
    throw contextualize(`listing ${dir}`, err);
  }
}

/** The temporary name a write of `file` uses: hidden, per process. */
const tempName = (file: string) => path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);

/**
 * Removes temporary files that writers killed mid-write left in `dir` (of
 * `file` only, when given). Callers hold whatever keeps live writers out (a
 * lock), or remove the file the temporaries were for.
 */
export function removeStaleTemps(dir: string, file?: string): void {
  const prefix = file === undefined ? '.' : `.${path.basename(file)}.`;
  for (const name of listDir(dir)) {
    if (name.startsWith(prefix) && name.endsWith('.tmp')) fs.rmSync(path.join(dir, name), { force: true });
  }
}

/**
 * Temporary files in `dir` whose writer process is gone (killed mid-write),
 * each with the name of the file it was for. A live writer's are not listed.
 */
export function deadWritersTemps(dir: string): { file: string; temp: string }[] {
  const out: { file: string; temp: string }[] = [];
  for (const name of listDir(dir)) {
    const m = /^\.(.+)\.(\d+)\.tmp$/.exec(name);
    if (m && !running(Number(m[2]))) out.push({ file: m[1]!, temp: path.join(dir, name) });
  }
  return out;
}

/** Whether process `pid` exists (kill(pid, 0): EPERM means it does, as another user's). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return hasCode(err, 'EPERM');
  }
}

/** What a file is written with: its content, or a function that writes it to the fd (a large file, in pieces). */
export type Content = string | Uint8Array | ((fd: number) => void);

/** Writes `content` to a temporary name next to `file` (synced when `durable`); returns that name. */
function writeTemp(file: string, content: Content, mode: number, durable = true): string {
  const tmp = tempName(file);
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    fs.fchmodSync(fd, mode); // the umask does not decide an executable's mode
    if (typeof content === 'function') content(fd);
    else if (typeof content === 'string') fs.writeSync(fd, content);
    else fs.writeSync(fd, content);
    if (durable) fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return tmp;
}

/**
 * How a write must survive. Every write is atomic against a crash of the
 * process (rename: the old file or the new one). `durable` (the default) also
 * syncs file and directory, so the new file survives a power loss; callers
 * pass false for documents that only describe kernel state, which a power
 * loss takes with it anyway.
 */
export interface WriteOptions {
  durable?: boolean;
}

/** Replaces `file` with `content` atomically: readers see the old file or the new one, never half of one. */
export function writeFileAtomic(file: string, content: Content, mode = 0o600, o: WriteOptions = {}): void {
  const dir = path.dirname(file);
  const durable = o.durable ?? true;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  let tmp: string | undefined;
  try {
    tmp = writeTemp(file, content, mode, durable);
    fs.renameSync(tmp, file);
    if (durable) syncDir(dir);
  } catch (err) {
    if (tmp) fs.rmSync(tmp, { force: true });
    throw contextualize(`writing ${file}`, err);
  }
}

/** Replaces `file` with `data` as JSON, atomically. */
export function writeJsonAtomic(file: string, data: unknown, o: WriteOptions = {}): void {
  writeFileAtomic(file, `${JSON.stringify(data, null, 1)}\n`, 0o600, o);
}

/**
 * Runs `fn` holding the exclusive lock `name` in `dir` (an flock on
 * DIR/NAME.lock). Waits up to `timeoutMs` for another holder, polling so the
 * event loop keeps running.
 */
export async function withLock<T>(
  dir: string,
  name: string,
  fn: (lockFd: number) => Promise<T> | T,
  timeoutMs = 30_000,
): Promise<T> {
  return withLockFile(path.join(dir, `${name}.lock`), fn, timeoutMs);
}

/**
 * Runs `fn` holding an exclusive flock on `file` (created if missing), as
 * withLock. `fn` gets the lock's fd, to hand to child processes that must
 * hold the lock as long as they run.
 */
export async function withLockFile<T>(
  file: string,
  fn: (lockFd: number) => Promise<T> | T,
  timeoutMs = 30_000,
): Promise<T> {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    const deadline = Date.now() + timeoutMs;
    for (let wait = 1; !native().tryLock(fd); wait = Math.min(wait * 2, 50)) {
      if (Date.now() > deadline)
        throw new TsnetError(
          `timed out after ${timeoutMs} ms waiting for ${file} (another tsnet is working; try again)`,
          { code: 'EAGAIN' },
        );
      await new Promise((r) => setTimeout(r, wait));
    }
    return await fn(fd);
  } finally {
    fs.closeSync(fd); // releases the flock (unless a child still holds it)
  }
}

/**
 * Creates `file` with `content` if it does not exist, atomically: the content
 * is written and synced under a temporary name, then hard-linked into place
 * (link(2) fails if the name is taken). A crash leaves either no file or the
 * whole file, never an empty one. Returns false when the name was taken.
 */
export function createExclusive(file: string, content: string): boolean {
  let tmp: string | undefined;
  try {
    tmp = writeTemp(file, content, 0o600);
    try {
      fs.linkSync(tmp, file);
    } catch (err) {
      if (isExists(err)) return false;
      throw err;
    }
    syncDir(path.dirname(file));
    return true;
  } catch (err) {
    throw contextualize(`creating ${file}`, err);
  } finally {
    if (tmp) fs.rmSync(tmp, { force: true });
  }
}

export function syncDir(dir: string): void {
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}
