import test from 'ava';
import { NetlinkSocket, NLM_F, type Transport, type TransportFactory } from '../../src/netlink/socket';

/** A fake kernel: records requests, answers with whatever the test scripts. */
class FakeKernel {
  sent: { type: number; flags: number; seq: number }[] = [];
  answer: (req: { type: number; flags: number; seq: number }) => Buffer[] = () => [];
  /** The transport factory a NetlinkSocket is built with. */
  readonly open: TransportFactory = (onMessage) => {
    const t: Transport = {
      port: 4242,
      send: (parts) => {
        const b = Buffer.concat(parts);
        const req = { type: b.readUInt16LE(4), flags: b.readUInt16LE(6), seq: b.readUInt32LE(8) };
        this.sent.push(req);
        setImmediate(() => onMessage(Buffer.concat(this.answer(req))));
      },
      ref() {},
      unref() {},
      close() {},
    };
    return t;
  };
}

function msg(type: number, flags: number, seq: number, payload: Buffer, pid = 4242): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(16 + payload.length, 0);
  h.writeUInt16LE(type, 4);
  h.writeUInt16LE(flags, 6);
  h.writeUInt32LE(seq, 8);
  h.writeUInt32LE(pid, 12);
  return Buffer.concat([h, payload]);
}
const errorMsg = (seq: number, errno: number) => {
  const p = Buffer.alloc(20);
  p.writeInt32LE(-errno, 0);
  return msg(2, 0, seq, p);
};
const done = (seq: number, flags: number = NLM_F.MULTI) => msg(3, flags, seq, Buffer.alloc(4));

test('an ack resolves, an error rejects with the errno name', async (t) => {
  const k = new FakeKernel();
  const s = new NetlinkSocket(k.open);
  k.answer = (r) => [errorMsg(r.seq, 0)];
  t.deepEqual(await s.request(16, 0, Buffer.alloc(16)), []);
  k.answer = (r) => [errorMsg(r.seq, 17)];
  const err = await t.throwsAsync(s.request(16, 0, Buffer.alloc(16)));
  t.is((err as any).code, 'EEXIST');
  t.regex(err!.message, /EEXIST \(File exists\)/);
  t.true((k.sent[0]!.flags & NLM_F.ACK) !== 0);
});

test('replies with a foreign sequence number or port are not handed to the caller', async (t) => {
  const k = new FakeKernel();
  const s = new NetlinkSocket(k.open);
  k.answer = (r) => [
    msg(16, NLM_F.MULTI, r.seq + 1, Buffer.from('stray-seq!!!')),
    msg(16, NLM_F.MULTI, r.seq, Buffer.from('other-port!!'), 999),
    msg(16, NLM_F.MULTI, r.seq, Buffer.from('mine........')),
    done(r.seq),
  ];
  const got = await s.dump(18, Buffer.alloc(16));
  t.deepEqual(
    got.map((m) => m.payload.toString()),
    ['mine........'],
  );
});

test('a dump flagged NLM_F_DUMP_INTR is retried until consistent', async (t) => {
  const k = new FakeKernel();
  const s = new NetlinkSocket(k.open);
  let n = 0;
  k.answer = (r) =>
    ++n < 3
      ? [msg(16, NLM_F.MULTI | NLM_F.DUMP_INTR, r.seq, Buffer.from('old.')), done(r.seq, NLM_F.MULTI | NLM_F.DUMP_INTR)]
      : [msg(16, NLM_F.MULTI, r.seq, Buffer.from('new.')), done(r.seq)];
  const got = await s.dump(18, Buffer.alloc(16));
  t.is(n, 3);
  t.deepEqual(
    got.map((m) => m.payload.toString()),
    ['new.'],
  );
  t.is(new Set(k.sent.map((x) => x.seq)).size, 3, 'each retry uses a fresh sequence number');
});

test('a dump that never settles gives up with EINTR after a bounded number of tries', async (t) => {
  const k = new FakeKernel();
  const s = new NetlinkSocket(k.open);
  k.answer = (r) => [done(r.seq, NLM_F.MULTI | NLM_F.DUMP_INTR)];
  const err = await t.throwsAsync(s.dump(18, Buffer.alloc(16)));
  t.is((err as any).code, 'EINTR');
  t.is(k.sent.length, 11);
});

test('close rejects what is still pending', async (t) => {
  const k = new FakeKernel();
  k.answer = () => [];
  const s = new NetlinkSocket(k.open);
  const p = s.request(16, 0, Buffer.alloc(16));
  s.close();
  const err = await t.throwsAsync(p);
  t.is((err as any).code, 'ECANCELED');
});

test('batches sent from the threadpool reach the kernel in the order they were built, the next only once the one before is processed', async (t) => {
  const started: number[] = [];
  const release: (() => void)[] = [];
  const open: TransportFactory = () => ({
    port: 4242,
    send() {},
    sendAsync: (parts) => {
      started.push(Buffer.concat(parts).readUInt32LE(0));
      return new Promise<void>((resolve) => release.push(resolve));
    },
    drain: () => ({ replies: [], overrun: false }),
    ref() {},
    unref() {},
    close() {},
  });
  const s = new NetlinkSocket(open);
  const batch = (id: number) => (seq: number) => {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(id, 0);
    return { bytes, lastSeq: seq };
  };
  const first = s.transactAsync(batch(1));
  const second = s.transactAsync(batch(2)); // built at once, while the first is with the kernel
  await new Promise((r) => setImmediate(r));
  t.deepEqual(started, [1], 'the second waits for the first');
  release.shift()!();
  await first;
  await new Promise((r) => setImmediate(r));
  t.deepEqual(started, [1, 2]);
  release.shift()!();
  t.deepEqual((await second).errors.size, 0);
});
