/**
 * The index of a NAT snapshot (nat.index, beside nat.json): for each
 * service line of the snapshot, where it is (offset, length) and what a
 * change asks of it without parsing it: its name, its VIP:port/proto, its
 * family, protocol and endpoint count, its endpoints' addresses. Names, VIP
 * keys and addresses are kept as 32-bit hashes in sorted (hash, row) pairs,
 * found by binary search; a hash names candidates, and the one row parsed
 * settles it. Loading is reading the file: a command that changes one
 * service of ten thousand parses one.
 *
 * The file carries the digest of the snapshot it indexes: an index of
 * another snapshot (a crash between writing the two, a hand edit) is not
 * used, and the rows are indexed again from the snapshot itself.
 *
 *   u32 magic, version, byte-order mark; 44 bytes: the snapshot's digest (43 + NUL)
 *   u32 rows, ipEntries
 *   rows x 7 u32     offset, length, name hash, VIP hash, family | proto << 8 | endpoints << 16, ipStart, ipCount
 *   rows x 2 u32     (name hash, row) sorted      rows x 2 u32  (VIP hash, row) sorted
 *   ipEntries x 2    (address hash, row) sorted   ipEntries     each row's address hashes, rows' slices in order
 */
import { familyOf, vipKey, type Service } from './model';

const MAGIC = 0x584e5354; // "TSNX"
const VERSION = 1;
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

export function metaOf(s: Service): RowMeta {
  return {
    nameHash: hash32(s.name),
    vipHash: hash32(vipKey(s)),
    family: familyOf(s.vip),
    proto: s.proto,
    endpoints: s.endpoints.length,
    ips: [...new Set(s.endpoints.map((e) => e.ip))].map(hash32),
  };
}

/** The rows whose `pairs` hash is `h` (pairs: sorted (hash, row)). */
function lookup(pairs: Uint32Array, h: number): number[] {
  let lo = 0;
  let hi = pairs.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (pairs[2 * mid]! < h) lo = mid + 1;
    else hi = mid;
  }
  const out: number[] = [];
  for (let i = lo; 2 * i < pairs.length && pairs[2 * i] === h; i++) out.push(pairs[2 * i + 1]!);
  return out;
}

function sortedPairs(entries: [number, number][]): Uint32Array {
  entries.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const out = new Uint32Array(entries.length * 2);
  entries.forEach(([h, r], i) => {
    out[2 * i] = h;
    out[2 * i + 1] = r;
  });
  return out;
}

export class SnapshotIndex {
  private constructor(
    readonly digest: string,
    private readonly rows: Uint32Array,
    private readonly names: Uint32Array,
    private readonly vips: Uint32Array,
    private readonly ipPairs: Uint32Array,
    private readonly ipHashes: Uint32Array,
  ) {}

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
  byIp = (ip: string): number[] => lookup(this.ipPairs, hash32(ip));

  /** Rows described by `metas`, at `spans` of the snapshot whose digest is `digest`. */
  static build(digest: string, spans: readonly [number, number][], metas: readonly RowMeta[]): SnapshotIndex {
    const rows = new Uint32Array(metas.length * ROW_WORDS);
    const ipEntries: [number, number][] = [];
    const ipHashes: number[] = [];
    metas.forEach((m, k) => {
      const [from, to] = spans[k]!;
      rows.set(
        [
          from,
          to - from,
          m.nameHash,
          m.vipHash,
          m.family | (PROTOS.indexOf(m.proto) << 8) | (m.endpoints << 16),
          ipHashes.length,
          m.ips.length,
        ],
        k * ROW_WORDS,
      );
      for (const h of m.ips) {
        ipHashes.push(h);
        ipEntries.push([h, k]);
      }
    });
    return new SnapshotIndex(
      digest,
      rows,
      sortedPairs(metas.map((m, k) => [m.nameHash, k])),
      sortedPairs(metas.map((m, k) => [m.vipHash, k])),
      sortedPairs(ipEntries),
      Uint32Array.from(ipHashes),
    );
  }

  /** The file's bytes. */
  encode(): Buffer {
    const n = this.count;
    const words = new Uint32Array(HEAD_WORDS + n * (ROW_WORDS + 4) + this.ipHashes.length * 3);
    words.set([MAGIC, VERSION, BOM]);
    const digest = Buffer.alloc(DIGEST_BYTES);
    digest.write(this.digest, 'latin1');
    new Uint8Array(words.buffer).set(digest, 12);
    words.set([n, this.ipHashes.length], 3 + DIGEST_BYTES / 4);
    let at = HEAD_WORDS;
    for (const part of [this.rows, this.names, this.vips, this.ipPairs, this.ipHashes]) {
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
    if (words.length !== HEAD_WORDS + n * (ROW_WORDS + 4) + m * 3) return undefined;
    let at = HEAD_WORDS;
    const take = (len: number) => words.subarray(at, (at += len));
    return new SnapshotIndex(digest, take(n * ROW_WORDS), take(2 * n), take(2 * n), take(2 * m), take(m));
  }
}
