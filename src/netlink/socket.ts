/**
 * The request / ack / dump loop over one netlink socket (NETLINK_ROUTE, or
 * NETLINK_NETFILTER for conntrack and nf_tables).
 *
 * Transport is a netlink socket owned by the native addon (an fd polled by
 * libuv, see native/tsnet_native.cc). The fd is made by src/netns inside the
 * namespace it must act in (a netlink socket acts in the namespace it was
 * created in); this layer only speaks the protocol over it.
 *
 * What this layer guarantees, because other libraries got it wrong:
 * - every reply is matched to its request by sequence number (and our port);
 *   replies to nobody are dropped, never handed to the wrong caller;
 * - a dump whose messages carry NLM_F_DUMP_INTR (the table changed while the
 *   kernel was walking it) is retried, a bounded number of times;
 * - NLMSG_ERROR becomes a NetlinkError with its errno name and, when the
 *   kernel explains itself (extended ack), its text.
 */
import { NetlinkError, TsnetError } from '../errors';
import { native } from '../native';

export const NETLINK_ROUTE = 0;
export const NETLINK_NETFILTER = 12;

export const NLM_F = {
  REQUEST: 0x1,
  MULTI: 0x2,
  ACK: 0x4,
  ECHO: 0x8,
  DUMP_INTR: 0x10,
  ROOT: 0x100,
  MATCH: 0x200,
  DUMP: 0x300,
  REPLACE: 0x100,
  EXCL: 0x200,
  CREATE: 0x400,
  APPEND: 0x800,
} as const;

export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_HDRLEN = 16;
const DUMP_RETRIES = 10;
/** Flags of an NLMSG_ERROR: the request was not echoed (NETLINK_CAP_ACK), extended-ack attributes follow. */
const NLM_F_CAPPED = 0x100;
const NLM_F_ACK_TLVS = 0x200;
const NLMSGERR_ATTR_MSG = 1;

export interface Message {
  type: number;
  flags: number;
  payload: Buffer;
}

interface Pending {
  dump: boolean;
  replies: Message[];
  interrupted: boolean;
  resolve(msgs: Message[]): void;
  reject(err: Error): void;
}

class DumpInterrupted extends Error {}

/** A batch sent by transactAsync and not yet answered. */
interface InFlight {
  first: number;
  last: number;
  errors: Map<number, NetlinkError>;
  overrun: boolean;
  failure?: Error;
}

/** What the loop needs from a datagram transport: the addon's socket in production, a fake kernel in unit tests. */
export interface Transport {
  /** Our netlink port (nl_pid). */
  readonly port: number;
  /** One datagram to the kernel (synchronous: the kernel has processed it when this returns); throws on failure. */
  send(parts: Uint8Array[]): void;
  /** One datagram, and every reply the kernel queued while processing it. */
  transact?(parts: Uint8Array[]): { replies: Buffer[]; overrun: boolean };
  /** One datagram sent off the loop's thread: resolves once the kernel has processed it. */
  sendAsync?(parts: Uint8Array[]): Promise<void>;
  /** Every datagram already queued, without waiting. */
  drain?(): { replies: Buffer[]; overrun: boolean };
  /** Joins a multicast group (NETLINK_ADD_MEMBERSHIP): the kernel's notifications of changes. */
  addMembership?(group: number): void;
  /** Keep the event loop alive while replies are due. */
  ref(): void;
  unref(): void;
  close(): void;
}

/** Makes a transport that calls back with every datagram received and every receive error. */
export type TransportFactory = (onMessage: (buf: Buffer) => void, onError: (err: Error) => void) => Transport;

/** The kernel's extended-ack text in an NLMSG_ERROR payload, when it sent one. */
export function extackText(flags: number, payload: Buffer): string | undefined {
  if (!(flags & NLM_F_ACK_TLVS) || payload.length < 4 + NLMSG_HDRLEN) return undefined;
  const origLen = payload.readUInt32LE(4);
  let off = 4 + (flags & NLM_F_CAPPED ? NLMSG_HDRLEN : Math.max(origLen, NLMSG_HDRLEN));
  off = (off + 3) & ~3;
  while (off + 4 <= payload.length) {
    const len = payload.readUInt16LE(off);
    const type = payload.readUInt16LE(off + 2) & 0x3fff;
    if (len < 4 || off + len > payload.length) break;
    if (type === NLMSGERR_ATTR_MSG)
      return payload.toString('utf8', off + 4, off + len).replace(/\0.*$/s, '') || undefined;
    off += (len + 3) & ~3;
  }
  return undefined;
}

/** Buffers asked for every socket; root gets them whatever net.core.rmem_max says (SO_RCVBUFFORCE). */
export const DEFAULT_BUFFER = 1 << 20;

/** A transport over a netlink socket fd (made by src/netns inside its namespace); the transport owns the fd. */
export function nativeTransport(fd: number, buffer = DEFAULT_BUFFER): TransportFactory {
  return (onMessage, onError) => {
    const s = new (native().NlSocket)(fd, onMessage, onError);
    try {
      s.setBuffers(buffer, buffer);
    } catch (err) {
      s.close();
      throw err;
    }
    return {
      port: s.port(),
      send: (parts) => {
        s.send(parts);
      },
      transact: (parts) => s.transact(parts),
      sendAsync: (parts) => s.sendAsync(parts),
      drain: () => s.drain(),
      addMembership: (group) => s.addMembership(group),
      ref: () => s.ref(),
      unref: () => s.unref(),
      close: () => s.close(),
    };
  };
}

export class NetlinkSocket {
  private readonly raw: Transport;
  private readonly port: number;
  private readonly pending = new Map<number, Pending>();
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private closed = false;
  private dumpQueue: Promise<void> = Promise.resolve();
  /** Batches sent off the loop's thread and not yet answered: their replies, routed by sequence number. */
  private readonly batches = new Set<InFlight>();
  /** The last batch handed to the threadpool: the next is sent after it. */
  private sending: Promise<void> = Promise.resolve();
  /** A monitor's listener (subscribe): every message that answers no request of ours. */
  private monitor?: { notify: (m: Message) => void; lost: () => void };

  /** Speaks netlink over the transport `open` makes (src/netns makes sockets inside namespaces). */
  constructor(open: TransportFactory) {
    this.raw = open(
      (buf) => this.receive(buf),
      (err) => this.failAll(err),
    );
    this.port = this.raw.port;
    this.raw.unref();
  }

  /**
   * Makes this socket a monitor (`ip monitor`): joins `groups` (RTNLGRP_*)
   * and calls `notify` with each change the kernel reports. `lost` is called
   * when notifications were dropped (the receive buffer overflowed, ENOBUFS):
   * the listener must then read the state in full. Use a socket of its own:
   * a notification carries the sequence number of whoever made the change.
   */
  subscribe(groups: readonly number[], notify: (m: Message) => void, lost: () => void): void {
    if (!this.raw.addMembership)
      throw new TsnetError('this transport cannot join multicast groups', { code: 'EINTERNAL' });
    for (const g of groups) this.raw.addMembership(g);
    this.monitor = { notify, lost };
  }

  /** A request that the kernel acknowledges (NLM_F_ACK): resolves on ack, rejects on error. */
  async request(type: number, flags: number, payload: Buffer): Promise<Message[]> {
    return this.send(type, NLM_F.REQUEST | NLM_F.ACK | flags, payload, false);
  }

  /**
   * A dump (NLM_F_DUMP): every message up to NLMSG_DONE, retried when the
   * kernel flags it inconsistent. Dumps on one socket run one at a time: the
   * kernel refuses a second while one is in progress (EBUSY).
   */
  dump(type: number, payload: Buffer, flags = 0): Promise<Message[]> {
    const run = this.dumpQueue.then(() => this.dumpNow(type, payload, flags));
    this.dumpQueue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async dumpNow(type: number, payload: Buffer, flags: number): Promise<Message[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.send(type, NLM_F.REQUEST | NLM_F.DUMP | flags, payload, true);
      } catch (err) {
        if (!(err instanceof DumpInterrupted)) throw err;
        if (attempt >= DUMP_RETRIES) {
          throw new TsnetError(
            `dump of message type ${type} kept changing under us (NLM_F_DUMP_INTR ${DUMP_RETRIES + 1} times)`,
            { code: 'EINTR' },
          );
        }
      }
    }
  }

  /**
   * Sends one batch of messages as one datagram (an nf_tables transaction)
   * and returns the errors the kernel reported, by sequence number. `build`
   * gets the first sequence number to use and returns the bytes and the last
   * one it used. Successful messages are not acknowledged (as nft does): no
   * error means the whole batch was committed.
   */
  transact(build: (firstSeq: number) => { bytes: Buffer; lastSeq: number }): {
    errors: Map<number, NetlinkError>;
    overrun: boolean;
  } {
    if (this.closed) throw new TsnetError('netlink socket is closed', { code: 'EBADF' });
    if (!this.raw.transact) throw new TsnetError('this transport cannot carry a batch', { code: 'EINTERNAL' });
    // The batch's replies are taken here; anything else queued meanwhile (a dump under way) goes to its caller.
    const { b, batch } = this.begin(build);
    try {
      const { replies, overrun } = this.raw.transact([batch.bytes]);
      for (const buf of replies) this.receive(buf);
      if (overrun) b.overrun = true;
    } finally {
      this.batches.delete(b);
    }
    return { errors: b.errors, overrun: b.overrun };
  }

  /**
   * transact(), with the batch sent from the threadpool: the loop keeps
   * serving while the kernel applies it (an nf_tables batch of megabytes
   * holds the kernel for hundreds of milliseconds). The errors are those
   * transact() reports; the batch's replies are told from others by
   * sequence number, whichever way they are read.
   */
  async transactAsync(build: (firstSeq: number) => { bytes: Buffer; lastSeq: number }): Promise<{
    errors: Map<number, NetlinkError>;
    overrun: boolean;
  }> {
    if (this.closed) throw new TsnetError('netlink socket is closed', { code: 'EBADF' });
    if (!this.raw.sendAsync) return this.transact(build);
    const { b, batch } = this.begin(build);
    // Batches go to the kernel in the order they were built (a caller may build the next while one is applied).
    const sent = this.sending.then(() => this.raw.sendAsync!([batch.bytes]));
    this.sending = sent.then(
      () => undefined,
      () => undefined,
    );
    try {
      await sent;
      // Processed inside sendmsg: every reply is queued by now (some the poll may have delivered already).
      if (!this.closed && this.raw.drain) {
        const rest = this.raw.drain();
        for (const buf of rest.replies) this.receive(buf);
        if (rest.overrun) b.overrun = true;
      }
    } finally {
      this.batches.delete(b);
    }
    if (b.failure) throw b.failure;
    return { errors: b.errors, overrun: b.overrun };
  }

  /** A batch built from the next sequence number on, and in flight from now: its replies are routed to it. */
  private begin(build: (firstSeq: number) => { bytes: Buffer; lastSeq: number }): {
    b: InFlight;
    batch: { bytes: Buffer; lastSeq: number };
  } {
    const first = (this.seq + 1) & 0x7fffffff;
    const batch = build(first);
    this.seq = batch.lastSeq & 0x7fffffff;
    const b: InFlight = { first, last: batch.lastSeq, errors: new Map(), overrun: false };
    this.batches.add(b);
    return { b, batch };
  }

  /** A reply to a batch in flight: its error kept. */
  private batchReply(type: number, flags: number, seq: number, payload: Buffer): boolean {
    for (const b of this.batches) {
      if (seq < b.first || seq > b.last) continue;
      if (type === NLMSG_ERROR) {
        const errno = -payload.readInt32LE(0);
        if (errno !== 0 && !b.errors.has(seq)) b.errors.set(seq, new NetlinkError(errno, extackText(flags, payload)));
      }
      return true;
    }
    return false;
  }

  /**
   * Closes the socket. What the kernel already answered is delivered first:
   * it processes a request inside sendmsg, so a request sent before close()
   * was applied, and must not be reported cancelled. Only requests still
   * without an answer (a dump's remaining parts) fail, with ECANCELED.
   */
  close(): void {
    if (this.closed) return;
    if (this.pending.size > 0 && this.raw.drain) {
      try {
        for (const buf of this.raw.drain().replies) this.receive(buf);
      } catch {
        // a socket that cannot be read any more: what is left fails below
      }
    }
    this.closed = true;
    this.raw.close();
    this.failAll(new TsnetError('netlink socket closed', { code: 'ECANCELED' }));
  }

  private send(type: number, flags: number, payload: Buffer, dump: boolean): Promise<Message[]> {
    if (this.closed) return Promise.reject(new TsnetError('netlink socket is closed', { code: 'EBADF' }));
    const seq = (this.seq = (this.seq + 1) & 0x7fffffff);
    const hdr = Buffer.alloc(NLMSG_HDRLEN);
    hdr.writeUInt32LE(NLMSG_HDRLEN + payload.length, 0);
    hdr.writeUInt16LE(type, 4);
    hdr.writeUInt16LE(flags, 6);
    hdr.writeUInt32LE(seq, 8);
    hdr.writeUInt32LE(this.port, 12);
    return new Promise<Message[]>((resolve, reject) => {
      this.pending.set(seq, { dump, replies: [], interrupted: false, resolve, reject });
      if (this.pending.size === 1) this.raw.ref();
      try {
        this.raw.send([hdr, payload]);
      } catch (err) {
        this.settle(seq, err as Error);
      }
    });
  }

  private receive(buf: Buffer): void {
    let off = 0;
    while (off + NLMSG_HDRLEN <= buf.length) {
      const len = buf.readUInt32LE(off);
      if (len < NLMSG_HDRLEN || off + len > buf.length) break;
      const type = buf.readUInt16LE(off + 4);
      const flags = buf.readUInt16LE(off + 6);
      const seq = buf.readUInt32LE(off + 8);
      const pid = buf.readUInt32LE(off + 12);
      const payload = buf.subarray(off + NLMSG_HDRLEN, off + len);
      off += (len + 3) & ~3;
      if (this.batches.size && this.batchReply(type, flags, seq, payload)) continue;

      const p = this.pending.get(seq);
      if (!p || (pid !== this.port && pid !== 0)) {
        // Not a reply to anything we asked: a notification, if this socket monitors.
        this.monitor?.notify({ type, flags, payload: Buffer.from(payload) });
        continue;
      }
      if (flags & NLM_F.DUMP_INTR) p.interrupted = true;

      if (type === NLMSG_ERROR) {
        const errno = -payload.readInt32LE(0);
        if (errno === 0) this.settle(seq);
        else this.settle(seq, new NetlinkError(errno, extackText(flags, payload)));
      } else if (type === NLMSG_DONE) {
        this.settle(seq, p.interrupted ? new DumpInterrupted() : undefined);
      } else {
        p.replies.push({ type, flags, payload: Buffer.from(payload) });
        // A non-dump request answered with data and no MULTI flag is complete (e.g. RTM_GETLINK by name).
        if (!p.dump && !(flags & NLM_F.MULTI)) this.settle(seq);
      }
    }
  }

  private settle(seq: number, err?: Error): void {
    const p = this.pending.get(seq);
    if (!p) return;
    this.pending.delete(seq);
    if (this.pending.size === 0 && !this.closed) this.raw.unref();
    if (err) p.reject(err);
    else p.resolve(p.replies);
  }

  private failAll(err: Error): void {
    // A monitor's notifications lost to an overflow: the listener reads everything again.
    if ((err as { code?: string }).code === 'ENOBUFS' && this.monitor) {
      this.monitor.lost();
      return;
    }
    // A batch in flight: a lost reply (ENOBUFS) leaves its outcome unknown; a closed socket fails it.
    for (const b of this.batches) {
      if ((err as { code?: string }).code === 'ENOBUFS') b.overrun = true;
      else b.failure ??= err;
    }
    for (const seq of [...this.pending.keys()]) this.settle(seq, err);
  }
}
