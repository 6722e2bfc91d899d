/**
 * A raw client of the agent socket, for the tests that play a misbehaving or
 * unprivileged shim: `node agent-client.js SOCKET [REQUEST_JSON]` connects,
 * reads the first frame (hello or deny), sends REQUEST_JSON as a request when
 * given and the agent said hello, and prints what happened as JSON.
 */
import * as net from 'node:net';
import { FrameReader, decodeReply, encodeRequest, type Request } from '../../src/agent/protocol';

const [socket, requestJson] = process.argv.slice(2);
const out: { error?: string; hello?: string; reply?: unknown; closed?: boolean } = {};
const c = net.connect(socket!);
const reader = new FrameReader();
const frames: Buffer[] = [];
const done = () => {
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
};
c.on('error', (e: NodeJS.ErrnoException) => {
  out.error = e.code ?? e.message;
  done();
});
c.on('data', (d: Buffer) => {
  frames.push(...reader.push(d));
  if (frames.length === 1 && out.hello === undefined) {
    out.hello = frames[0]!.toString();
    if (!requestJson || !out.hello.startsWith('tsnet-agent/1 ')) return done(); // nothing more to see
    c.write(encodeRequest(JSON.parse(requestJson) as Request));
  }
  if (frames.length >= 2) {
    out.reply = decodeReply(frames[1]!);
    done();
  }
});
c.on('close', () => {
  out.closed = true;
  done();
});
setTimeout(() => {
  out.error = 'timeout';
  done();
}, 10_000);
