/**
 * `probe.js HOST PORT TIMEOUT_MS`: exits 0 once a TCP connection to HOST:PORT
 * is established, 1 with the reason on stderr otherwise. Run as a child inside
 * the forwarding namespace, so the check sees what the forward will see.
 */
import * as net from 'node:net';

const [host, port, timeout] = process.argv.slice(2);
const s = net.connect({ host: host!, port: Number(port) });
const timer = setTimeout(() => fail(`no answer within ${timeout} ms`), Number(timeout ?? 3000));
function fail(why: string): void {
  process.stderr.write(`${why}\n`);
  process.exit(1);
}
s.on('connect', () => {
  clearTimeout(timer);
  s.destroy();
  process.exit(0);
});
s.on('error', (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
