/**
 * Where the NAT engine keeps its desired state: a snapshot (nat.json) with
 * its index (nat.index), and a journal of the changes applied since
 * (nat.journal), so that recording one changed service costs one appended
 * line, not a rewrite of ten thousand.
 *
 *   nat.json      { version: 3, digest, seq, backend, applied, sysctls, families, desired: { rules, forwards, services } }
 *                 one line up to `"services":[`, then one line per service, then `]}}`
 *   nat.index     where each service line is and what a change asks of it (./snapshot-index), for the digest above
 *   nat.journal   one JSON line per successful round: { seq, changes, backend, applied, sysctls }
 *
 * Loading replays the journal lines whose seq follows the snapshot's (a line
 * torn by a crash ends the replay: that round never completed). The journal
 * is folded into a new snapshot when it grows, or when a round's record is
 * large (a full state, or the iptables backend's per-chain digests). A long-
 * lived process (the agent) keeps what it loaded and re-reads only when the
 * files changed under it (another tsnet took the lock meanwhile).
 *
 * The snapshot carries a digest of the bytes after it (sha256): a file tsnet
 * wrote is trusted, its services left as lines in the bytes read, found
 * through the index and parsed only when read; a hand-edited one is
 * validated in full. An index of another snapshot (or none: an earlier
 * release wrote the snapshot) is made again from the lines themselves.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TsnetError, contextualize, hasCode } from '../errors';
import { writeFileAtomic } from '../state';
import { IndexedState, type NatChange } from './changes';
import { readChange } from './change-json';
import { emptyState, normalizeState, type DesiredState, type Service } from './model';
import { IndexBuilder, SnapshotIndex } from './snapshot-index';
import type { StoredServices } from './service-table';
import { readApplied, type Applied, type BackendName } from './backends/types';

export interface StateFile {
  version: 1 | 2 | 3;
  /** sha256 (base64url) of the file's bytes after it, when tsnet wrote it. */
  digest?: string;
  /** The journal line the snapshot includes (0: none). */
  seq?: number;
  backend?: BackendName;
  desired: DesiredState;
  applied?: Applied;
  /** Sysctls tsnet changed (path under /proc/sys/ joined by '/') -> the value they had before, restored when no longer needed. */
  sysctls?: Record<string, string>;
  /** How many services have an IPv4 and an IPv6 VIP (written for readers without the index). */
  families?: { 4: number; 6: number };
}

/** What a load gives: the record of the last round (no desired state: that is `indexed`'s). */
export type StateRecord = Omit<StateFile, 'desired' | 'families' | 'digest'>;

interface JournalLine {
  seq: number;
  changes: NatChange[];
  backend: BackendName;
  applied?: Applied;
  sysctls?: Record<string, string>;
}

export interface Loaded {
  f: StateRecord;
  indexed: IndexedState;
}

/** A journal longer than this is folded into a snapshot. */
const FOLD_LINES = 1000;
/** A round whose line would be larger than this is recorded as a snapshot. */
const MAX_LINE = 64 * 1024;

/** The changes to the rules and forwards (set-state aside): what globals() replays from the journal. */
const GLOBAL_KINDS = new Set<NatChange['kind']>(['add-rule', 'delete-rule', 'put-forward', 'delete-forward']);

/** The first line of a snapshot tsnet wrote (the head, up to `"services":[`), or undefined: none, or not tsnet's. */
function readHead(file: string): string | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return undefined;
    throw contextualize(`reading ${file}`, err);
  }
  try {
    const chunks: Buffer[] = [];
    for (let pos = 0; ;) {
      const b = Buffer.alloc(64 * 1024);
      const n = fs.readSync(fd, b, 0, b.length, pos);
      if (n === 0) return undefined;
      const nl = b.subarray(0, n).indexOf(0x0a);
      chunks.push(b.subarray(0, nl < 0 ? n : nl));
      if (nl >= 0) break;
      pos += n;
    }
    const head = Buffer.concat(chunks).toString('utf8');
    return head.startsWith(HEAD) ? head : undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/** A snapshot tsnet wrote begins with this, then the 43-character digest of everything after it. */
const HEAD = '{"version":3,"digest":"';
const DIGEST_LEN = 43;
const digestOf = (bytes: Uint8Array | string) => createHash('sha256').update(bytes).digest('base64url');

function stampOf(file: string): string {
  try {
    const s = fs.statSync(file, { bigint: true });
    return `${s.ino}:${s.size}:${s.mtimeNs}`;
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return '-';
    throw err;
  }
}

/** The sync record in today's shape (one an earlier release wrote is read as such). */
function recordOf(f: Partial<StateFile>): StateRecord {
  const { desired: _d, families: _f, digest: _g, ...rec } = f;
  const applied = readApplied(rec.applied);
  if (applied) rec.applied = applied;
  else delete rec.applied;
  return { version: 3, ...rec } as StateRecord;
}

export class NatStore {
  readonly file: string;
  readonly index: string;
  readonly journal: string;
  private cache?: { stamp: string; loaded: Loaded; seq: number; lines: number };

  constructor(readonly dir: string) {
    this.file = path.join(dir, 'nat.json');
    this.index = path.join(dir, 'nat.index');
    this.journal = path.join(dir, 'nat.journal');
  }

  private stamp(): string {
    return `${stampOf(this.file)}|${stampOf(this.journal)}`;
  }

  /** The state as stored (from memory when the files did not change since). */
  load(): Loaded {
    const stamp = this.stamp();
    if (this.cache?.stamp === stamp) return this.cache.loaded;
    const { f, indexed } = this.readSnapshot();
    let seq = f.seq ?? 0;
    let lines = 0;
    for (const line of this.readJournal()) {
      if (line.seq <= seq) continue;
      indexed.apply(line.changes);
      f.backend = line.backend;
      const applied = readApplied(line.applied);
      if (applied) f.applied = applied;
      else delete f.applied;
      if (line.sysctls) f.sysctls = line.sysctls;
      else delete f.sysctls;
      seq = line.seq;
      lines++;
    }
    const loaded = { f, indexed };
    this.cache = { stamp, loaded, seq, lines };
    return loaded;
  }

  /**
   * The rules and forwards alone (what `forward` and `nat rule` read): the
   * snapshot's first line, which holds them, and the journal's changes to
   * them; the services are neither read nor checked. A snapshot tsnet did not
   * write (no digest head) is loaded in full.
   */
  globals(): Pick<DesiredState, 'rules' | 'forwards'> {
    if (this.cache?.stamp === this.stamp()) return this.cache.loaded.indexed;
    const head = readHead(this.file);
    let f: StateFile | undefined;
    try {
      if (head !== undefined) f = JSON.parse(`${head}]}}`) as StateFile;
    } catch {
      // not the head line tsnet writes (a file rewritten on one line): the full load says what is wrong with it
    }
    if (!f?.desired || !Array.isArray(f.desired.rules) || !Array.isArray(f.desired.forwards))
      return this.load().indexed;
    const g = IndexedState.of({ services: [], rules: f.desired.rules, forwards: f.desired.forwards });
    let seq = f.seq ?? 0;
    for (const line of this.readJournal()) {
      if (line.seq <= seq) continue;
      for (const c of line.changes) {
        if (GLOBAL_KINDS.has(c.kind)) g.apply([c]);
        else if (c.kind === 'set-state') g.apply([{ kind: 'set-state', state: { ...c.state, services: [] } }]);
      }
      seq = line.seq;
    }
    return g;
  }

  private readSnapshot(): Loaded {
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(this.file);
    } catch (err) {
      if (hasCode(err, 'ENOENT')) return { f: { version: 3 }, indexed: IndexedState.of(emptyState()) };
      throw contextualize(`reading ${this.file}`, err);
    }
    const digest = bytes.toString('latin1', HEAD.length, HEAD.length + DIGEST_LEN);
    if (
      bytes.toString('latin1', 0, HEAD.length) === HEAD &&
      digest === digestOf(bytes.subarray(HEAD.length + DIGEST_LEN))
    ) {
      // As tsnet wrote it: the header line, closed, and the service lines left in the bytes, found through the index.
      const nl = bytes.indexOf(0x0a);
      const f = JSON.parse(`${bytes.toString('utf8', 0, nl)}]}}`) as StateFile;
      const index = this.readIndex(digest) ?? this.reindex(bytes, nl + 1, digest);
      return { f: recordOf(f), indexed: IndexedState.stored({ bytes, index }, f.desired.rules, f.desired.forwards) };
    }
    return this.readEdited(bytes);
  }

  /**
   * A snapshot without its index (an earlier release's, a crash between the two writes): indexed from its lines,
   * and the index written, so the next load reads it. Best effort: a state a reader cannot write is still read.
   */
  private reindex(bytes: Buffer, from: number, digest: string): SnapshotIndex {
    const index = indexLines(bytes, from, bytes.lastIndexOf('\n]}}'), digest);
    try {
      this.writeIndex(index);
    } catch {}
    return index;
  }

  private writeIndex(index: SnapshotIndex): void {
    writeFileAtomic(this.index, (fd) => fs.writeSync(fd, index.encode()));
  }

  /** nat.index, when it indexes the snapshot of `digest`. */
  private readIndex(digest: string): SnapshotIndex | undefined {
    try {
      return SnapshotIndex.decode(fs.readFileSync(this.index), digest);
    } catch (err) {
      if (hasCode(err, 'ENOENT')) return undefined;
      throw contextualize(`reading ${this.index}`, err);
    }
  }

  /** A snapshot someone edited (or of format 1): every service checked. */
  private readEdited(bytes: Buffer): Loaded {
    let f: StateFile;
    try {
      f = JSON.parse(bytes.toString('utf8')) as StateFile;
    } catch (err) {
      throw new TsnetError(
        `${this.file} is not valid JSON (${(err as Error).message}): restore it from a backup or remove it`,
        { code: 'EINVAL' },
      );
    }
    let desired: DesiredState;
    try {
      desired = normalizeState({
        services: f.desired?.services ?? [],
        rules: f.desired?.rules ?? [],
        forwards: f.desired?.forwards ?? [],
      });
    } catch (err) {
      throw new TsnetError(
        `${this.file} holds an invalid desired state (${(err as Error).message}): fix or remove it`,
        { code: 'EINVAL' },
      );
    }
    return { f: recordOf(f), indexed: IndexedState.of(desired) };
  }

  private readJournal(): JournalLine[] {
    let text: string;
    try {
      text = fs.readFileSync(this.journal, 'utf8');
    } catch (err) {
      if (hasCode(err, 'ENOENT')) return [];
      throw contextualize(`reading ${this.journal}`, err);
    }
    const out: JournalLine[] = [];
    for (const line of text.split('\n')) {
      if (!line) continue;
      try {
        const parsed = JSON.parse(line) as JournalLine;
        const changes = parsed.changes.map(readChange);
        if (!changes.every((c) => c !== undefined)) break; // not a journal line of ours: read no further, as torn
        out.push({ ...parsed, changes });
      } catch {
        break; // a torn last line: that round never completed
      }
    }
    return out;
  }

  /**
   * Records a successful round: `changes` led from the loaded state to
   * `next`. One journal line when small; a new snapshot otherwise (no
   * changes given, a large record, or a long journal).
   */
  save(next: IndexedState, record: Omit<StateRecord, 'version' | 'seq'>, changes?: readonly NatChange[]): Loaded {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const seq = (this.cache?.seq ?? 0) + 1;
    const lines = this.cache?.lines ?? 0;
    const f: StateRecord = { version: 3, seq, ...record };
    let line: string | undefined;
    if (changes && lines < FOLD_LINES && record.backend) {
      const entry: JournalLine = { seq, changes: [...changes], backend: record.backend };
      if (record.applied) entry.applied = record.applied;
      if (record.sysctls) entry.sysctls = record.sysctls;
      line = `${JSON.stringify(entry)}\n`;
      if (line.length > MAX_LINE) line = undefined;
    }
    if (line) {
      const fd = fs.openSync(this.journal, 'a', 0o600);
      try {
        fs.writeSync(fd, line);
        fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      this.cache = { stamp: this.stamp(), loaded: { f, indexed: next }, seq, lines: lines + 1 };
    } else {
      // The snapshot, then its index: a crash between the two leaves an index of another digest, which is not
      // used (the snapshot is indexed from its lines). Synced like the snapshot: the digest binds the index to
      // it, but only the sync vouches for the index's own bytes after a power loss.
      let index: SnapshotIndex | undefined;
      writeFileAtomic(this.file, (fd) => (index = writeSnapshot(fd, next, seq, record)));
      this.writeIndex(index!);
      fs.rmSync(this.journal, { force: true });
      this.cache = { stamp: this.stamp(), loaded: { f, indexed: next }, seq, lines: 0 };
    }
    return this.cache.loaded;
  }

  /** Forgets what was loaded (after a failure: the next load reads the files). */
  forget(): void {
    this.cache = undefined;
  }
}

/** Services as a snapshot holds them, one line each (`line`: how each is written), with their index: a stored state without a file. */
export function storedServices(
  services: readonly Service[],
  line: (s: Service) => string = (s) => JSON.stringify(s),
): StoredServices {
  const bytes = Buffer.from(`\n${services.map(line).join(',\n')}\n`);
  return { bytes, index: indexLines(bytes, 1, bytes.length - 1, '-'.repeat(DIGEST_LEN)) };
}

/** An index of the service lines in `bytes[from, to)` (a snapshot without its index): each line parsed once. */
function indexLines(bytes: Buffer, from: number, to: number, digest: string): SnapshotIndex {
  const spans: [number, number][] = [];
  for (let at = from; at < to;) {
    let nl = bytes.indexOf(0x0a, at);
    if (nl < 0 || nl > to) nl = to;
    spans.push([at, bytes[nl - 1] === 0x2c ? nl - 1 : nl]); // a line's `,` separates, it is not the service's
    at = nl + 1;
  }
  const index = new IndexBuilder();
  for (const [a, b] of spans) index.service(JSON.parse(bytes.toString('utf8', a, b)) as Service, a, b);
  return index.finish(digest);
}

/**
 * Writes the snapshot file (see the top of this file) to `fd` in pieces, a
 * thousand services at a time, hashing as it goes; the digest goes in place
 * last. A big table never becomes one string. Returns the index of what it wrote.
 */
/** What separates service lines in a snapshot. */
const SEPARATOR = Buffer.from(',\n');

function writeSnapshot(
  fd: number,
  st: IndexedState,
  seq: number,
  record: Omit<StateRecord, 'version' | 'seq'>,
): SnapshotIndex {
  const { rules, forwards } = st;
  const header = JSON.stringify({
    version: 3,
    seq,
    ...record,
    families: st.familyCounts(),
    desired: { rules, forwards, services: [] },
  });
  const hash = createHash('sha256');
  let at = 0;
  const put = (text: string | Buffer) => {
    hash.update(text);
    at += typeof text === 'string' ? fs.writeSync(fd, text, at) : fs.writeSync(fd, text, 0, text.length, at);
  };
  at = fs.writeSync(fd, `${HEAD}${'-'.repeat(DIGEST_LEN)}`, 0);
  // After the digest: the header without its `{"version":3,` and closing `]}}`, the service lines, the closing.
  put(`",${header.slice('{"version":3,'.length, -3)}\n`);
  // The lines go out in pieces: changed services' texts in batches, and runs of unchanged rows that lay
  // side by side in the snapshot read as one slice of its bytes (separators and all: nothing decoded).
  const index = new IndexBuilder();
  let lines = 0;
  let written = false;
  let batch: string[] = [];
  let run: { bytes: Buffer; from: number; to: number } | undefined;
  const flush = () => {
    if (batch.length) put(`${written ? ',\n' : ''}${batch.join(',\n')}`);
    else if (run)
      put(
        written
          ? Buffer.concat([SEPARATOR, run.bytes.subarray(run.from, run.to)])
          : run.bytes.subarray(run.from, run.to),
      );
    else return;
    written = true;
    batch = [];
    run = undefined;
  };
  let next = at;
  const { lines: all, snapshot } = st.serviceLines();
  for (const line of all) {
    if (lines++) next += 2; // ",\n" before every line but the first
    if (typeof line !== 'number') {
      if (run) flush();
      const text = JSON.stringify(line);
      const end = next + Buffer.byteLength(text);
      index.service(line, next, end);
      next = end;
      batch.push(text);
      if (batch.length === 1000) flush();
      continue;
    }
    const { bytes, index: old } = snapshot!;
    const [from, to] = old.span(line);
    index.copy(old, line, next, next + to - from);
    next += to - from;
    // The next row of the snapshot extends the run; anything else ends it.
    if (run && from === run.to + 2 && SEPARATOR.equals(bytes.subarray(run.to, from))) run.to = to;
    else {
      flush();
      run = { bytes, from, to };
    }
  }
  flush();
  put(`${lines ? '\n' : ''}]}}\n`);
  const digest = hash.digest('base64url');
  fs.writeSync(fd, digest, HEAD.length);
  return index.finish(digest);
}
