/**
 * Many rtnetlink requests in one sendmsg, as `ip -batch` sends them one by
 * one: the kernel runs every message of the datagram in turn and, without
 * NLM_F_ACK, answers only the ones that fail. A peer table of thousands of
 * routes, neighbours and FDB entries costs one system call, not thousands of
 * round trips.
 */
import type { NetlinkError } from '../errors';
import { NLMSG_HDRLEN, NLM_F, type NetlinkSocket } from './socket';

export interface BatchMessage {
  type: number;
  /** NLM_F_* beyond REQUEST (CREATE, REPLACE, EXCL, APPEND). */
  flags: number;
  payload: Buffer;
}

/** What the kernel refused, by the index of the message in the batch. */
export interface BatchResult {
  errors: Map<number, NetlinkError>;
  /** Replies were lost (the receive buffer overflowed): what was applied is unknown, read it back. */
  overrun: boolean;
}

/** Sends `msgs` as one datagram from the threadpool; resolves with the failures. */
export async function sendBatch(sock: NetlinkSocket, msgs: readonly BatchMessage[]): Promise<BatchResult> {
  if (msgs.length === 0) return { errors: new Map(), overrun: false };
  let first = 0;
  const { errors, overrun } = await sock.transactAsync((firstSeq) => {
    first = firstSeq;
    const size = msgs.reduce((n, m) => n + NLMSG_HDRLEN + ((m.payload.length + 3) & ~3), 0);
    const bytes = Buffer.alloc(size);
    let off = 0;
    msgs.forEach((m, i) => {
      bytes.writeUInt32LE(NLMSG_HDRLEN + m.payload.length, off);
      bytes.writeUInt16LE(m.type, off + 4);
      bytes.writeUInt16LE(NLM_F.REQUEST | m.flags, off + 6);
      // Sequence numbers are u32 on the wire: firstSeq < 2^31, so the batch never wraps (batchReply compares them so).
      bytes.writeUInt32LE(firstSeq + i, off + 8);
      m.payload.copy(bytes, off + NLMSG_HDRLEN);
      off += NLMSG_HDRLEN + ((m.payload.length + 3) & ~3);
    });
    return { bytes, lastSeq: firstSeq + msgs.length - 1 };
  });
  const byIndex = new Map<number, NetlinkError>();
  for (const [seq, err] of errors) byIndex.set(seq - first, err);
  return { errors: byIndex, overrun };
}
