/**
 * Where the NAT engine keeps its desired state: a snapshot (nat.json) and a
 * journal of the changes applied since (nat.journal), so that recording one
 * changed service costs one appended line, not a rewrite of ten thousand.
 *
 *   nat.json      { version: 3, digest, seq, backend, applied, sysctls, desired: { rules, forwards, services } }
 *                 one line up to `"services":[`, then one line per service, then `]}}`
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
 * wrote is trusted, its services left as
 * their JSON lines in the bytes read (StoredRows), decoded and parsed only
 * when read (a command that changes one service of 10,000 decodes one); a
 * hand-edited one is validated in full.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TsnetError, contextualize, hasCode } from '../errors';
import { writeFileAtomic } from '../state';
import { IndexedState, readChange, type NatChange } from './changes';
import { StoredRows } from './rows';
import { emptyState, normalizeState, type DesiredState } from './model';
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
  /** How many services have an IPv4 and an IPv6 VIP (a snapshot's header: a partial sync asks, and counting reads every row). */
  families?: { 4: number; 6: number };
}

interface JournalLine {
  seq: number;
  changes: NatChange[];
  backend: BackendName;
  applied?: Applied;
  sysctls?: Record<string, string>;
}

export interface Loaded {
  f: StateFile;
  indexed: IndexedState;
}

/** A journal longer than this is folded into a snapshot. */
const FOLD_LINES = 1000;
/** A round whose line would be larger than this is recorded as a snapshot. */
const MAX_LINE = 64 * 1024;

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

/** The sync record of a state file in today's shape (one an earlier release wrote is read as such). */
function withRecord(f: StateFile): StateFile {
  const applied = readApplied(f.applied);
  if (applied) f.applied = applied;
  else delete f.applied;
  return f;
}

export class NatStore {
  readonly file: string;
  readonly journal: string;
  private cache?: { stamp: string; loaded: Loaded; seq: number; lines: number };

  constructor(readonly dir: string) {
    this.file = path.join(dir, 'nat.json');
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
    f.desired = indexed.state;
    const loaded = { f, indexed };
    this.cache = { stamp, loaded, seq, lines };
    return loaded;
  }

  private readSnapshot(): Loaded {
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(this.file);
    } catch (err) {
      if (hasCode(err, 'ENOENT')) {
        const f: StateFile = { version: 3, desired: emptyState() };
        return { f, indexed: IndexedState.of(f.desired) };
      }
      throw contextualize(`reading ${this.file}`, err);
    }
    if (
      bytes.toString('latin1', 0, HEAD.length) === HEAD &&
      bytes.toString('latin1', HEAD.length, HEAD.length + DIGEST_LEN) ===
        digestOf(bytes.subarray(HEAD.length + DIGEST_LEN))
    ) {
      // As tsnet wrote it: the header line, closed, and the services as their lines, left in the bytes.
      const nl = bytes.indexOf(0x0a);
      const f = withRecord(JSON.parse(`${bytes.toString('utf8', 0, nl)}]}}`) as StateFile);
      const rows = StoredRows.scan(bytes, nl + 1, bytes.lastIndexOf('\n]}}'));
      const indexed = IndexedState.fromRows(rows, f.desired.rules, f.desired.forwards, f.families);
      delete f.families;
      return { f, indexed };
    }
    const text = bytes.toString('utf8');
    let f: StateFile;
    try {
      f = JSON.parse(text) as StateFile;
    } catch (err) {
      throw new TsnetError(
        `${this.file} is not valid JSON (${(err as Error).message}): restore it from a backup or remove it`,
        { code: 'EINVAL' },
      );
    }
    try {
      f.desired = normalizeState({
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
    return { f: withRecord(f), indexed: IndexedState.of(f.desired) };
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
        out.push({ ...parsed, changes: parsed.changes.map(readChange) });
      } catch {
        break; // torn by a crash mid-append: that round never completed
      }
    }
    return out;
  }

  /**
   * Records a successful round: `changes` led from the loaded state to
   * `next`. One journal line when small; a new snapshot otherwise (no
   * changes given, a large record, or a long journal).
   */
  save(
    next: IndexedState,
    record: Omit<StateFile, 'version' | 'desired' | 'seq' | 'digest'>,
    changes?: readonly NatChange[],
  ): Loaded {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const seq = (this.cache?.seq ?? 0) + 1;
    const lines = this.cache?.lines ?? 0;
    const f: StateFile = { version: 3, ...record, desired: next.state };
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
      writeFileAtomic(this.file, (fd) => writeSnapshot(fd, next, seq, record));
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

/**
 * Writes the snapshot file (see the top of this file) to `fd` in pieces, a
 * thousand services at a time, hashing as it goes; the digest goes in place
 * last. A big table never becomes one string.
 */
function writeSnapshot(
  fd: number,
  st: IndexedState,
  seq: number,
  record: Omit<StateFile, 'version' | 'desired' | 'seq' | 'digest'>,
): void {
  const { rules, forwards } = st.state;
  const header = JSON.stringify({
    version: 3,
    seq,
    ...record,
    families: st.familyCounts(),
    desired: { rules, forwards, services: [] },
  });
  const hash = createHash('sha256');
  let at = 0;
  const put = (text: string) => {
    hash.update(text);
    at += fs.writeSync(fd, text, at);
  };
  at = fs.writeSync(fd, `${HEAD}${'-'.repeat(DIGEST_LEN)}`, 0);
  // After the digest: the header without its `{"version":3,` and closing `]}}`, the service lines, the closing.
  put(`",${header.slice('{"version":3,'.length, -3)}\n`);
  let batch: string[] = [];
  let first = true;
  const flush = () => {
    if (!batch.length) return;
    put(`${first ? '' : ',\n'}${batch.join(',\n')}`);
    first = false;
    batch = [];
  };
  for (const line of st.serviceTexts()) {
    batch.push(line);
    if (batch.length === 1000) flush();
  }
  flush();
  put(`${first ? '' : '\n'}]}}\n`);
  fs.writeSync(fd, hash.digest('base64url'), HEAD.length);
}
