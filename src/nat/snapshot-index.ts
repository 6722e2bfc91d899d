/**
 * The index of a NAT snapshot (nat.index, beside nat.json): for each
 * service line of the snapshot, where it is (offset, length) and what a
 * change asks of it without parsing it: its name, its VIP:port/proto, its
 * family, protocol and endpoint count, its endpoints' addresses. Names, VIP
 * keys and addresses are kept as 32-bit hashes; names and VIP keys in
 * open-addressing tables of (hash, row) slots, built in one pass as the
 * snapshot is written (no sort); addresses, asked only when a change must
 * know whether another service uses one, get their table when first asked.
 * A hash names candidates, and the one row parsed settles it. Loading is
 * reading the file: a command that changes one service of ten thousand
 * parses one.
 *
 * The file carries the digest of the snapshot it indexes: an index of
 * another snapshot (a crash between writing the two, a hand edit) is not
 * used, and the rows are indexed again from the snapshot itself.
 *
 *   u32 magic, version, byte-order mark; 44 bytes: the snapshot's digest (43 + NUL)
 *   u32 rows, ipEntries
 *   rows x 7 u32     offset, length, name hash, VIP hash, family | proto << 8 | endpoints << 16, ipStart, ipCount
 *   slots(rows) x 2 u32  (name hash, row) table      slots(rows) x 2 u32  (VIP hash, row) table
 *   ipEntries u32        each row's address hashes, in row order
 *   (slots(n): the power of two at or above 1.5 n; a slot holds row + 1, 0 when empty)
 */
import { familyOf, vipKey, type Service } from './model';

const MAGIC = 0x584e5354; // "TSNX"
const VERSION = 4;
const BOM = 0x01020304;
const DIGEST_BYTES = 44;
const HEAD_WORDS = 3 + DIGEST_BYTES / 4 + 2;
const ROW_WORDS = 7;
const PROTOS = ['tcp', 'udp'] as const;

/** FNV-1a over the string's UTF-16 units: names, VIP keys and addresses are ASCII. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** What the index keeps of one service line. */
export interface RowMeta {
  nameHash: number;
  vipHash: number;
  family: 4 | 6;
  proto: 'tcp' | 'udp';
  endpoints: number;
  /** Hashes of its endpoints' distinct addresses. */
  ips: number[];
}

/** A table's slot count for n entries: a power of two, at most two thirds full. */
function slots(n: number): number {
  let c = 2;
  while (c < n + (n >> 1)) c *= 2;
  return c;
}

/** The shift that takes a 32-bit product to a slot of a table of `size` (Fibonacci hashing: the high bits). */
const shiftOf = (size: number) => 32 - Math.log2(size);
const home = (h: number, shift: number) => Math.imul(h, 0x9e3779b1) >>> shift;

/**
 * The (hash, row + 1) table of `hashes` (row i, or rows[i]), by linear
 * probing; 0 marks an empty slot, so a new table needs no filling. Entries
 * go in row order, so equal hashes are met in row order.
 */
function table(hashes: Uint32Array, rows?: Uint32Array): Uint32Array {
  const size = slots(hashes.length);
  const shift = shiftOf(size);
  const t = new Uint32Array(size * 2);
  for (let i = 0; i < hashes.length; i++) {
    const h = hashes[i]!;
    let k = home(h, shift);
    while (t[2 * k + 1] !== 0) k = (k + 1) & (size - 1);
    t[2 * k] = h;
    t[2 * k + 1] = (rows ? rows[i]! : i) + 1;
  }
  return t;
}

/** The rows whose hash in table `t` is `h`. */
function lookup(t: Uint32Array, h: number): number[] {
  const size = t.length / 2;
  const out: number[] = [];
  for (let k = home(h, shiftOf(size)); t[2 * k + 1] !== 0; k = (k + 1) & (size - 1))
    if (t[2 * k] === h) out.push(t[2 * k + 1]! - 1);
  return out;
}

/** The words after the header, for n rows and m address entries. */
const fileWords = (n: number, m: number) => n * ROW_WORDS + 4 * slots(n) + m;

export class SnapshotIndex {
  /** (Made by IndexBuilder.finish or decode.) */
  constructor(
    readonly digest: string,
    readonly rows: Uint32Array,
    private readonly names: Uint32Array,
    private readonly vips: Uint32Array,
    readonly ipHashes: Uint32Array,
  ) {}

  private ipTable?: Uint32Array;

  get count(): number {
    return this.rows.length / ROW_WORDS;
  }

  /** Row k's bytes in the snapshot: [offset, offset + length). */
  span(k: number): [number, number] {
    const o = this.rows[k * ROW_WORDS]!;
    return [o, o + this.rows[k * ROW_WORDS + 1]!];
  }

  meta(k: number): RowMeta {
    const r = this.rows;
    const b = k * ROW_WORDS;
    const packed = r[b + 4]!;
    const start = r[b + 5]!;
    return {
      nameHash: r[b + 2]!,
      vipHash: r[b + 3]!,
      family: (packed & 0xff) === 6 ? 6 : 4,
      proto: PROTOS[(packed >>> 8) & 0xff] ?? 'tcp',
      endpoints: packed >>> 16,
      ips: [...this.ipHashes.subarray(start, start + r[b + 6]!)],
    };
  }

  family(k: number): 4 | 6 {
    return (this.rows[k * ROW_WORDS + 4]! & 0xff) === 6 ? 6 : 4;
  }

  nameHash(k: number): number {
    return this.rows[k * ROW_WORDS + 2]!;
  }

  /** Candidate rows of a name, a VIP key, an endpoint address (hash matches: the row itself says). */
  byName = (name: string): number[] => lookup(this.names, hash32(name));
  byVip = (key: string): number[] => lookup(this.vips, hash32(key));
  byIp = (ip: string): number[] => lookup((this.ipTable ??= this.addressTable()), hash32(ip));

  /** The (address hash, row) table, from each row's slice of ipHashes. */
  private addressTable(): Uint32Array {
    const rowOf = new Uint32Array(this.ipHashes.length);
    for (let k = 0; k < this.count; k++) {
      const start = this.rows[k * ROW_WORDS + 5]!;
      rowOf.fill(k, start, start + this.rows[k * ROW_WORDS + 6]!);
    }
    return table(this.ipHashes, rowOf);
  }

  /** The file's bytes. */
  encode(): Buffer {
    const n = this.count;
    const words = new Uint32Array(HEAD_WORDS + fileWords(n, this.ipHashes.length));
    words.set([MAGIC, VERSION, BOM]);
    const digest = Buffer.alloc(DIGEST_BYTES);
    digest.write(this.digest, 'latin1');
    new Uint8Array(words.buffer).set(digest, 12);
    words.set([n, this.ipHashes.length], 3 + DIGEST_BYTES / 4);
    let at = HEAD_WORDS;
    for (const part of [this.rows, this.names, this.vips, this.ipHashes]) {
      words.set(part, at);
      at += part.length;
    }
    return Buffer.from(words.buffer);
  }

  /** The index in `bytes`, if it is one of this version and byte order for the snapshot of `digest`. */
  static decode(bytes: Buffer, digest: string): SnapshotIndex | undefined {
    if (bytes.length < HEAD_WORDS * 4 || bytes.length % 4) return undefined;
    // A copy, 4-byte aligned: a Buffer read from a file may sit anywhere in its pool.
    const words = new Uint32Array(bytes.length / 4);
    new Uint8Array(words.buffer).set(bytes);
    if (words[0] !== MAGIC || words[1] !== VERSION || words[2] !== BOM) return undefined;
    if (bytes.toString('latin1', 12, 12 + digest.length) !== digest) return undefined;
    const n = words[3 + DIGEST_BYTES / 4]!;
    const m = words[4 + DIGEST_BYTES / 4]!;
    if (words.length !== HEAD_WORDS + fileWords(n, m)) return undefined;
    let at = HEAD_WORDS;
    const take = (len: number) => words.subarray(at, (at += len));
    const t = 2 * slots(n);
    return new SnapshotIndex(digest, take(n * ROW_WORDS), take(t), take(t), take(m));
  }
}

/**
 * An index made as its snapshot is written: each line added where it lands,
 * a changed service's from the service, an unchanged row's copied from the
 * index it had (nothing parsed, nothing allocated per line).
 */
export class IndexBuilder {
  private rows = new Uint32Array(ROW_WORDS * 1024);
  private ips = new Uint32Array(4096);
  private n = 0;
  private m = 0;

  /** A service's line at [from, to). */
  service(s: Service, from: number, to: number): void {
    const r = this.row(from, to);
    this.rows[r + 2] = hash32(s.name);
    this.rows[r + 3] = hash32(vipKey(s));
    this.rows[r + 4] = familyOf(s.vip) | (PROTOS.indexOf(s.proto) << 8) | (s.endpoints.length << 16);
    const start = this.m;
    // Each address once (by hash: a candidate list, settled by the row itself); a Set only for long lists.
    const seen = s.endpoints.length > 16 ? new Set<number>() : undefined;
    for (const e of s.endpoints) {
      const h = hash32(e.ip);
      if (seen ? seen.has(h) : this.has(h, start)) continue;
      seen?.add(h);
      this.ip(h);
    }
    this.rows[r + 6] = this.m - start;
  }

  /** Row `k` of `index`, unchanged, now at [from, to). */
  copy(index: SnapshotIndex, k: number, from: number, to: number): void {
    const r = this.row(from, to);
    const b = k * ROW_WORDS;
    this.rows.set(index.rows.subarray(b + 2, b + 5), r + 2);
    const start = index.rows[b + 5]!;
    const count = index.rows[b + 6]!;
    for (let i = start; i < start + count; i++) this.ip(index.ipHashes[i]!);
    this.rows[r + 6] = count;
  }

  finish(digest: string): SnapshotIndex {
    const n = this.n;
    const rows = this.rows.slice(0, n * ROW_WORDS);
    const names = new Uint32Array(n);
    const vips = new Uint32Array(n);
    for (let k = 0; k < n; k++) {
      names[k] = rows[k * ROW_WORDS + 2]!;
      vips[k] = rows[k * ROW_WORDS + 3]!;
    }
    return new SnapshotIndex(digest, rows, table(names), table(vips), this.ips.slice(0, this.m));
  }

  private row(from: number, to: number): number {
    if ((this.n + 1) * ROW_WORDS > this.rows.length) this.rows = grown(this.rows);
    const r = this.n++ * ROW_WORDS;
    this.rows[r] = from;
    this.rows[r + 1] = to - from;
    this.rows[r + 5] = this.m;
    return r;
  }

  /** Whether the current row lists address hash `h` (its list starts at `start`). */
  private has(h: number, start: number): boolean {
    for (let i = start; i < this.m; i++) if (this.ips[i] === h) return true;
    return false;
  }

  private ip(h: number): void {
    if (this.m === this.ips.length) this.ips = grown(this.ips);
    this.ips[this.m] = h;
    this.m++;
  }
}

function grown(a: Uint32Array<ArrayBuffer>): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(a.length * 2);
  b.set(a);
  return b;
}
