/**
 * A small traffic peer, run as a child process *inside* a namespace (so its
 * sockets are created there; see src/netns/inside.ts):
 *
 *   peer.js serve tcp|udp|http HOST PORT NAME     answers NAME to every request; prints "ready"
 *   peer.js request tcp|udp|http HOST PORT COUNT [TIMEOUT_MS] [CONCURRENCY] [SOURCE_PORT]
 *       (SOURCE_PORT: every request from this local port, i.e. one conntrack flow)
 *       prints {"ok":N,"fail":N,"replies":{NAME:count},"errors":[...]} as one JSON line
 *
 * A server exits when its stdin closes, so it never outlives the process that started it.
 */
import * as net from 'node:net';
import * as dgram from 'node:dgram';
import * as http from 'node:http';

type Proto = 'tcp' | 'udp' | 'http';

function serve(proto: Proto, host: string, port: number, name: string): void {
  const ready = () => process.stdout.write('ready\n');
  if (proto === 'tcp') {
    // A client that resets (a port probe does) must not take the server down.
    net.createServer((s) => s.on('error', () => undefined).end(`${name}\n`)).listen(port, host, ready);
  } else if (proto === 'http') {
    http.createServer((_req, res) => res.end(`${name}\n`)).listen(port, host, ready);
  } else {
    const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    sock.on('message', (_m, rinfo) => sock.send(`${name}\n`, rinfo.port, rinfo.address));
    sock.bind(port, host, ready);
  }
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

function once(proto: Proto, host: string, port: number, timeoutMs: number, sport?: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error('timeout')), timeoutMs);
    let finished = false;
    let cleanup = () => undefined as void;
    const done = (err: Error | null, v?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      cleanup();
      if (err) reject(err);
      else resolve(v!.trim());
    };
    if (proto === 'tcp') {
      let buf = '';
      const s = net.connect({ host, port, ...(sport ? { localPort: sport } : {}) }, () => undefined);
      s.setEncoding('utf8');
      s.on('data', (d: string) => (buf += d));
      s.on('end', () => done(null, buf));
      s.on('error', (e) => done(e));
      cleanup = () => s.destroy();
    } else if (proto === 'http') {
      const req = http.get({ host, port, path: '/', agent: false }, (res) => {
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (buf += d));
        res.on('end', () => done(null, buf));
      });
      req.on('error', (e) => done(e));
      cleanup = () => req.destroy();
    } else {
      const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
      sock.on('message', (m) => done(null, m.toString()));
      sock.on('error', (e) => done(e));
      const send = () => sock.send('ping', port, host);
      if (sport) sock.bind(sport, send);
      else send();
      cleanup = () => sock.close();
    }
  });
}

async function request(
  proto: Proto,
  host: string,
  port: number,
  count: number,
  timeoutMs: number,
  concurrency: number,
  sport?: number,
): Promise<void> {
  const result = { ok: 0, fail: 0, replies: {} as Record<string, number>, errors: [] as string[], ms: 0 };
  const t0 = process.hrtime.bigint();
  let next = 0;
  const worker = async () => {
    while (next < count) {
      next++;
      try {
        const r = await once(proto, host, port, timeoutMs, sport);
        result.ok++;
        result.replies[r] = (result.replies[r] ?? 0) + 1;
      } catch (e) {
        result.fail++;
        if (result.errors.length < 5) result.errors.push((e as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, count)) }, worker));
  result.ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const [mode, proto, host, port, a, b, c, d] = process.argv.slice(2);
if (mode === 'serve' && proto && host && port && a) serve(proto as Proto, host, Number(port), a);
else if (mode === 'request' && proto && host && port) {
  void request(
    proto as Proto,
    host,
    Number(port),
    Number(a ?? 1),
    Number(b ?? 2000),
    Number(c ?? 1),
    d ? Number(d) : undefined,
  );
} else {
  process.stderr.write('usage: peer.js serve|request tcp|udp|http HOST PORT ...\n');
  process.exit(2);
}
