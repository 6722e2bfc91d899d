/**
 * Netlink messages written into one growing buffer: what a batch of
 * thousands of messages needs (one allocation per growth, not one per
 * attribute). Lengths are patched in when a message or a nest ends.
 * Attributes are laid out by the same declarative tables as
 * encodeAttrs/decodeAttrs (./attrs).
 */
import { NLA_F_NESTED, align4, flag, type AttrObject, type Codec, type Siblings, type Table } from './attrs';

export class NlWriter {
  private buf: Buffer;
  private off = 0;

  constructor(size = 1 << 16) {
    this.buf = Buffer.allocUnsafe(size);
  }

  get length(): number {
    return this.off;
  }

  private room(n: number): void {
    if (this.off + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.off + n));
    this.buf.copy(next, 0, 0, this.off);
    this.buf = next;
  }

  // Plain byte stores, not Buffer's write* methods: a big sync writes
  // millions of these, and the values are the encoder's own (lengths are checked in end()).
  u8(v: number): void {
    this.room(1);
    this.buf[this.off++] = v;
  }
  u16(v: number): void {
    this.room(2);
    const b = this.buf;
    b[this.off] = v;
    b[this.off + 1] = v >>> 8;
    this.off += 2;
  }
  u16be(v: number): void {
    this.room(2);
    const b = this.buf;
    b[this.off] = v >>> 8;
    b[this.off + 1] = v;
    this.off += 2;
  }
  u32(v: number): void {
    this.room(4);
    const b = this.buf;
    const o = this.off;
    b[o] = v;
    b[o + 1] = v >>> 8;
    b[o + 2] = v >>> 16;
    b[o + 3] = v >>> 24;
    this.off += 4;
  }
  u32be(v: number): void {
    this.room(4);
    const b = this.buf;
    const o = this.off;
    b[o] = v >>> 24;
    b[o + 1] = v >>> 16;
    b[o + 2] = v >>> 8;
    b[o + 3] = v;
    this.off += 4;
  }
  u64be(v: bigint): void {
    this.room(8);
    this.buf.writeBigUInt64BE(v, this.off);
    this.off += 8;
  }
  zeros(n: number): void {
    this.room(n);
    for (let i = 0; i < n; i++) this.buf[this.off++] = 0;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.off);
    this.off += b.length;
  }
  asciiz(s: string): void {
    const n = Buffer.byteLength(s);
    this.room(n + 1);
    this.buf.write(s, this.off, 'utf8');
    this.buf[this.off + n] = 0;
    this.off += n + 1;
  }
  private pad(): void {
    this.zeros(align4(this.off) - this.off);
  }

  /** Starts an attribute (or a nest); returns where its header is, for end(). */
  begin(type: number, nestedFlag = false): number {
    this.pad();
    const at = this.off;
    this.u16(0);
    this.u16(type | (nestedFlag ? NLA_F_NESTED : 0));
    return at;
  }
  /** Ends the attribute begun at `at`: patches its length (unpadded, as the kernel expects). */
  end(at: number): void {
    const len = this.off - at;
    if (len > 0xffff) throw new RangeError(`netlink attribute of ${len} bytes: longer than 65535`);
    this.buf[at] = len;
    this.buf[at + 1] = len >>> 8;
    this.pad();
  }

  /** One attribute whose payload `codec` writes. */
  attr<T>(type: number, codec: Codec<T>, value: T, siblings: Siblings = {}): void {
    const at = this.begin(type, codec.nested ?? false);
    if (codec.write) codec.write(this, value, siblings);
    else this.bytes(codec.encode(value, siblings));
    this.end(at);
  }

  /** The named values of `obj` present in `table`, in table order (undefined: absent), as encodeAttrs does. */
  attrs(table: Table, obj: AttrObject): void {
    for (const spec of table) {
      const v = obj[spec.name];
      if (v === undefined || (v === false && spec.codec === flag)) continue;
      this.attr(spec.type, spec.codec, v, obj);
    }
  }

  /** Starts a netlink message (struct nlmsghdr); returns where it starts, for endMessage(). */
  beginMessage(type: number, flags: number, seq: number, port = 0): number {
    this.pad();
    const at = this.off;
    this.u32(0);
    this.u16(type);
    this.u16(flags);
    this.u32(seq);
    this.u32(port);
    return at;
  }
  endMessage(at: number): void {
    this.pad();
    this.buf.writeUInt32LE(this.off - at, at);
  }

  /** What has been written (a view of the internal buffer until the next write). */
  view(): Buffer {
    return this.buf.subarray(0, this.off);
  }
}
