/**
 * The services of a trusted snapshot as tsnet wrote them: one JSON line per
 * service in one buffer, found by their offsets and never decoded as a
 * whole. A command that changes one service of ten thousand decodes that
 * one line (and finds it by searching the bytes for its name), instead of
 * turning the whole file into a string and indexing every name first.
 *
 * A row begins `{"name":NAME,"vip":"VIP","port":...` (normalizeService's key
 * order) right after a newline; JSON never puts a raw newline inside a row,
 * so `\n{"name":` marks row starts and nothing else.
 */
import { TsnetError } from '../errors';
import type { Proto } from './model';

const NAME_AT = '{"name":'.length;
const QUOTE = 0x22;
const COLON = 0x3a;
const NEWLINE = 0x0a;
const COMMA = 0x2c;
const BACKSLASH = 0x5c;
/** What follows the name in a row. */
const VIP_PORT_PROTO = /^,"vip":"([^"]*)","port":(\d+),"proto":"([a-z]+)"/;

export class StoredRows {
  private constructor(
    private readonly buf: Buffer,
    /** Byte offsets of each row's first byte and of the byte after its last. */
    private readonly starts: Uint32Array,
    private readonly ends: Uint32Array,
  ) {}

  /**
   * The rows of `buf[from, to)`: lines, each but the last ending `,` (the
   * separators of the snapshot's services array). `buf[from - 1]` is the
   * newline before the first row.
   */
  static scan(buf: Buffer, from: number, to: number): StoredRows {
    let cap = 1024;
    let starts = new Uint32Array(cap);
    let ends = new Uint32Array(cap);
    let n = 0;
    for (let at = from; at < to;) {
      let nl = buf.indexOf(NEWLINE, at);
      if (nl < 0 || nl > to) nl = to;
      if (n === cap) {
        cap *= 2;
        const s = new Uint32Array(cap);
        s.set(starts);
        starts = s;
        const e = new Uint32Array(cap);
        e.set(ends);
        ends = e;
      }
      starts[n] = at;
      ends[n] = buf[nl - 1] === COMMA ? nl - 1 : nl;
      n++;
      at = nl + 1;
    }
    return new StoredRows(buf, starts.subarray(0, n), ends.subarray(0, n));
  }

  /** Rows from their texts (as the snapshot holds them): for tests and for callers that have lines, not a file. */
  static of(texts: readonly string[]): StoredRows {
    const buf = Buffer.from(`\n${texts.join(',\n')}`);
    return StoredRows.scan(buf, 1, buf.length);
  }

  get count(): number {
    return this.starts.length;
  }

  /** Row k's JSON text. */
  text(k: number): string {
    return this.buf.toString('utf8', this.starts[k], this.ends[k]);
  }

  /** The end of row k's name (its closing quote), escapes skipped. */
  private nameEnd(k: number): number {
    const buf = this.buf;
    let at = this.starts[k]! + NAME_AT + 1;
    for (;;) {
      at = buf.indexOf(QUOTE, at);
      if (at < 0 || at >= this.ends[k]!)
        throw new TsnetError(`stored service row ${this.text(k).slice(0, 80)} is not in tsnet's format`, {
          code: 'EINTERNAL',
        });
      let slashes = 0;
      while (buf[at - 1 - slashes] === BACKSLASH) slashes++;
      if (slashes % 2 === 0) return at;
      at++;
    }
  }

  /** Row k's service name. */
  name(k: number): string {
    return JSON.parse(this.buf.toString('utf8', this.starts[k]! + NAME_AT, this.nameEnd(k) + 1)) as string;
  }

  /** Whether row k's VIP is IPv6 (a colon in it), read without decoding the row. */
  isV6(k: number): boolean {
    const buf = this.buf;
    // After the name: `,"vip":"` (8 bytes), then the address up to its quote.
    for (let at = this.nameEnd(k) + 9; at < this.ends[k]!; at++) {
      const c = buf[at];
      if (c === QUOTE) return false;
      if (c === COLON) return true;
    }
    return false;
  }

  /** Row k's VIP, port and protocol, decoded from the bytes after its name. */
  vipPortProto(k: number): { vip: string; port: number; proto: Proto } {
    const at = this.nameEnd(k) + 1;
    const m = VIP_PORT_PROTO.exec(this.buf.toString('latin1', at, Math.min(this.ends[k]!, at + 120)));
    if (!m)
      throw new TsnetError(`stored service row ${this.text(k).slice(0, 80)} is not in tsnet's format`, {
        code: 'EINTERNAL',
      });
    return { vip: m[1]!, port: Number(m[2]), proto: m[3] as Proto };
  }

  /** The row of the service called `name`, by a search of the bytes (no index needed); -1 if none. */
  find(name: string): number {
    if (!this.count) return -1;
    const at = this.buf.indexOf(`\n{"name":${JSON.stringify(name)},"vip":`, this.starts[0]! - 1);
    return at < 0 ? -1 : this.rowAt(at + 1);
  }

  /** The rows whose text contains any of `needles` (a set of row numbers). */
  containing(needles: readonly string[]): Set<number> {
    const out = new Set<number>();
    if (!this.count) return out;
    for (const needle of needles) {
      const bytes = Buffer.from(needle);
      for (let at = this.buf.indexOf(bytes, this.starts[0]); at >= 0;) {
        const k = this.rowAt(at);
        if (k < 0) break;
        out.add(k);
        at = this.buf.indexOf(bytes, this.ends[k]);
      }
    }
    return out;
  }

  /** The row holding byte `at`, or -1 (past the last row). */
  private rowAt(at: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! > at) hi = mid - 1;
      else if (this.ends[mid]! < at) lo = mid + 1;
      else return mid;
    }
    return -1;
  }
}
