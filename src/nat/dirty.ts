/**
 * The dirty mark (nat.dirty beside the state): present while a sync is
 * under way. A tsnet killed between applying and recording leaves it, and
 * the next sync is then a full one (or, after a first sync, a teardown by
 * the backend it names). A file of its own, so it needs no fsync: the
 * durable state is never replaced by a version a power loss could empty.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hasCode } from '../errors';
import type { Applied, BackendName } from './backends/types';
import type { StateRecord } from './store';

const file = (dir: string) => path.join(dir, 'nat.dirty');

/** Marks `dir` dirty: a sync by `backend` (and iptables `mode`) is under way. */
export function markDirty(dir: string, backend: BackendName, mode?: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(file(dir), `${process.pid} ${backend}${mode ? ` ${mode}` : ''}\n`);
}

export function clearDirty(dir: string): void {
  fs.rmSync(file(dir), { force: true });
}

/** Which backend (and iptables mode) the sync that left the mark was applying with; undefined: no mark. */
function readDirty(dir: string): { backend: BackendName; mode?: string } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file(dir), 'utf8');
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return undefined;
    throw err;
  }
  // Older marks hold only a pid: they were written with a record, whose backend is known.
  const [, backend, mode] = text.trim().split(/\s+/);
  const b = (['iptables', 'nft', 'netlink'] as const).find((x) => x === backend) ?? 'iptables';
  return mode ? { backend: b, mode } : { backend: b };
}

/** The record `f` as a dirty mark in `dir` makes it: what is live is unknown until a full sync, and may be rules no record names. */
export function withDirtyMark(dir: string, f: StateRecord): StateRecord {
  const dirty = readDirty(dir);
  if (!dirty) return f;
  const applied: Applied = f.applied
    ? { ...f.applied, clean: false }
    : dirty.backend === 'iptables'
      ? { backend: 'iptables', ...(dirty.mode ? { mode: dirty.mode } : {}), clean: false, families: {} }
      : { backend: dirty.backend, clean: false, families: {} };
  return { ...f, applied };
}
