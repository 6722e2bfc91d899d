/**
 * `tsnet forward` against the two things it replaces, in one run:
 *
 *   bf-clients 10.93.0.2 --br-cl-- bf-fwd (10.93.0.1 | 10.92.0.1) --br-db-- bf-db 10.92.0.2 (TCP :3306, iperf3 :5201)
 *
 *   direct    clients -> 10.92.0.2:3306, routed by bf-fwd (ip_forward on), no NAT: the floor
 *   forward   `tsnet forward 10.92.0.2 3308 3306` in bf-fwd (DNAT + SNAT in the kernel), clients -> 10.93.0.1:3308,
 *             once per backend (iptables, nft)
 *   socat     `socat TCP-LISTEN:3309,fork,reuseaddr TCP:10.92.0.2:3306` in bf-fwd (a userspace relay), clients -> 10.93.0.1:3309
 *
 * Per path: TCP connect latency (connect, one-line reply, close; the client is
 * src/demo/traffic's request(), one connection at a time; the client process's
 * start is removed by subtracting a count-1 run) and iperf3 throughput (one
 * stream, received bits/s). iperf3 reaches the server through a second forward
 * (5202 -> 5201) and a second relay (5203 -> 5201).
 *
 * Run with `npm run bench:forward` (inside the sandbox; needs iperf3 and socat).
 * BENCH_CONNECTS (default 1000) and BENCH_IPERF_SECONDS (default 5) override the sizes.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as netns from '../src/netns';
import * as link from '../src/link';
import * as bridge from '../src/bridge';
import * as sysctl from '../src/sysctl';
import { attach } from '../src/attach';
import { request, serve, type Server } from '../src/demo/traffic';
import { CLI, assertSandbox, run } from '../test/harness/fixtures';

const CONNECTS = Number(process.env.BENCH_CONNECTS ?? 1000);
const IPERF_SECONDS = Number(process.env.BENCH_IPERF_SECONDS ?? 5);

const DB_IP = '10.92.0.2';
const FWD_IP = '10.93.0.1'; // bf-fwd's address on the clients' side
const DB_PORT = 3306;
const IPERF_PORT = 5201;
const FWD_PORT = 3308;
const FWD_IPERF_PORT = 5202;
const RELAY_PORT = 3309;
const RELAY_IPERF_PORT = 5203;

interface Result {
  path: string;
  connectMs: number;
  gbps: number;
}

/** System directories first, as test/harness/fixtures does (under npm, node_modules/.bin comes first). */
const SYSTEM_PATH = `/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin:${process.env.PATH ?? ''}`;

function missingTools(): string[] {
  return ['iperf3', 'socat'].filter((tool) => {
    const r = spawnSync(tool, ['-h'], { stdio: 'ignore', env: { ...process.env, PATH: SYSTEM_PATH } });
    return (r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
  });
}

/** Children this bench is ending itself: their exit is not an error. */
const stopping = new WeakSet<ChildProcess>();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts a long-running tool inside `ns`; rejects at once if it cannot start. */
function start(ns: netns.NetNs, cmd: string, args: string[]): ChildProcess {
  const child = ns.spawn(cmd, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PATH: SYSTEM_PATH },
  });
  let err = '';
  child.stderr?.on('data', (d) => (err += d));
  child.once('exit', (code, signal) => {
    if (!stopping.has(child)) console.error(`bench: ${cmd} in ${ns.label} exited (${code ?? signal}): ${err.trim()}`);
  });
  child.on('error', () => undefined); // reported through 'exit' / waitListening
  return child;
}

/** Ends one child this bench started, by its own handle (SIGTERM, then SIGKILL), and waits for it. */
function stop(child: ChildProcess): Promise<void> {
  stopping.add(child);
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 3000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** Waits until a TCP socket listens on `port` inside `ns` (ss: a probe connection would disturb iperf3's server). */
async function waitListening(ns: netns.NetNs, port: number, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`${child.spawnfile} exited before listening on port ${port}`);
    const r = run('ip', ['netns', 'exec', ns.name!, 'ss', '-Hltn', `sport = :${port}`]);
    if (r.status === 0 && r.stdout.trim() !== '') return;
    await sleep(50);
  }
  throw new Error(`nothing listens on port ${port} in ${ns.label} after 5 s`);
}

async function timedRequest(clients: netns.NetNs, host: string, port: number, count: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await request(clients, 'tcp', host, port, { count, concurrency: 1 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.ok !== count || r.replies.db !== count) {
    throw new Error(
      `${host}:${port}: ${r.ok}/${count} answered (${JSON.stringify(r.replies)}), ${r.fail} failed: ${r.errors.join('; ')}`,
    );
  }
  return ms;
}

/** ms per connection: (T(CONNECTS) - T(1)) / (CONNECTS - 1), T(1) the median of 3 (it is mostly the client's start). */
async function connectLatency(clients: netns.NetNs, host: string, port: number): Promise<number> {
  await timedRequest(clients, host, port, 10); // warm-up: ARP, conntrack, page cache
  const ones = [];
  for (let i = 0; i < 3; i++) ones.push(await timedRequest(clients, host, port, 1));
  const one = ones.sort((a, b) => a - b)[1]!;
  const many = await timedRequest(clients, host, port, CONNECTS);
  return (many - one) / (CONNECTS - 1);
}

/** iperf3 client inside `clients`, one stream; returns end.sum_received.bits_per_second in Gbit/s. */
function throughput(clients: netns.NetNs, host: string, port: number): Promise<number> {
  const child = clients.spawn('iperf3', ['-c', host, '-p', String(port), '-t', String(IPERF_SECONDS), '-J'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PATH: SYSTEM_PATH },
  });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), (IPERF_SECONDS + 30) * 1000);
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      let j: any;
      try {
        j = JSON.parse(out);
      } catch {
        return reject(
          new Error(
            `iperf3 -c ${host} -p ${port} exited (${code ?? signal}) without JSON: ${err.trim() || out.slice(0, 300)}`,
          ),
        );
      }
      const bps = j?.end?.sum_received?.bits_per_second;
      if (j.error || typeof bps !== 'number')
        return reject(new Error(`iperf3 -c ${host} -p ${port}: ${j.error ?? 'no end.sum_received in its report'}`));
      resolve(bps / 1e9);
    });
  });
}

async function measure(
  name: string,
  clients: netns.NetNs,
  host: string,
  port: number,
  iperfPort: number,
): Promise<Result> {
  const connectMs = await connectLatency(clients, host, port);
  const gbps = await throughput(clients, host, iperfPort);
  console.log(`  measured ${name.padEnd(24)} ${connectMs.toFixed(3)} ms  ${gbps.toFixed(2)} Gbit/s`);
  return { path: name, connectMs, gbps };
}

async function main(): Promise<void> {
  assertSandbox();
  const missing = missingTools();
  if (missing.length) {
    console.error(`bench: ${missing.join(' and ')} not found: apt-get install -y iperf3 socat`);
    process.exit(1);
  }

  const made: netns.NetNs[] = [];
  const children: ChildProcess[] = [];
  const servers: Server[] = [];
  const dirs: string[] = [];
  const results: Result[] = [];
  try {
    const mk = async (name: string) => {
      netns.del(name);
      const h = netns.add(name);
      made.push(h);
      await link.setUp(h, 'lo');
      return h;
    };
    const clients = await mk('bf-clients');
    const fwd = await mk('bf-fwd');
    const db = await mk('bf-db');
    await bridge.ensure(fwd, 'br-cl', { addresses: [`${FWD_IP}/24`] });
    await bridge.ensure(fwd, 'br-db', { addresses: ['10.92.0.1/24'] });
    await attach(fwd, clients, { bridge: 'br-cl', address: '10.93.0.2/24' }); // default via 10.93.0.1
    await attach(fwd, db, { bridge: 'br-db', address: `${DB_IP}/24` }); // default via 10.92.0.1: the direct path's way back
    sysctl.set(fwd, sysctl.keys.ipForward, 1);

    servers.push(await serve(db, 'tcp', DB_IP, DB_PORT, 'db'));
    const iperfServer = start(db, 'iperf3', ['-s', '-p', String(IPERF_PORT)]);
    children.push(iperfServer);
    await waitListening(db, IPERF_PORT, iperfServer);

    console.log(
      `tsnet forward vs direct routing vs a socat relay: ${CONNECTS} sequential TCP connects, iperf3 ${IPERF_SECONDS} s one stream (kernel ${os.release()}, ${os.cpus().length} CPUs)`,
    );

    results.push(await measure('direct', clients, DB_IP, DB_PORT, IPERF_PORT));

    // The userspace relay, before any NAT table exists in bf-fwd.
    const relays = [
      start(fwd, 'socat', [`TCP-LISTEN:${RELAY_PORT},fork,reuseaddr`, `TCP:${DB_IP}:${DB_PORT}`]),
      start(fwd, 'socat', [`TCP-LISTEN:${RELAY_IPERF_PORT},fork,reuseaddr`, `TCP:${DB_IP}:${IPERF_PORT}`]),
    ];
    children.push(...relays);
    await waitListening(fwd, RELAY_PORT, relays[0]!);
    await waitListening(fwd, RELAY_IPERF_PORT, relays[1]!);
    results.push(await measure('socat relay', clients, FWD_IP, RELAY_PORT, RELAY_IPERF_PORT));
    await Promise.all(relays.map(stop));

    for (const backend of ['iptables', 'nft'] as const) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-bench-fwd-${backend}-`));
      dirs.push(dir);
      const cli = (...a: string[]) => {
        const r = run(process.execPath, [CLI, '--netns', fwd.name!, '--backend', backend, '--state-dir', dir, ...a]);
        if (r.status !== 0) throw new Error(`tsnet forward (${backend}) ${a.join(' ')}: ${r.stderr.trim()}`);
        return r.stdout.trim();
      };
      try {
        cli('forward', DB_IP, String(FWD_PORT), String(DB_PORT));
        // --no-check: the check's probe connection would be iperf3's server's first "client".
        cli('forward', DB_IP, String(FWD_IPERF_PORT), String(IPERF_PORT), '--name', 'iperf', '--no-check');
        results.push(await measure(`tsnet forward (${backend})`, clients, FWD_IP, FWD_PORT, FWD_IPERF_PORT));
      } finally {
        // Reported, not thrown: an error here must not hide the one that got us here.
        for (const name of [DB_IP, 'iperf']) {
          try {
            cli('forward', 'rm', name);
          } catch (err) {
            console.error(`bench: ${(err as Error).message}`);
          }
        }
      }
    }

    // The direct path again: the NAT tables the forwards loaded may leave conntrack active in bf-fwd.
    results.push(await measure('direct (after forwards)', clients, DB_IP, DB_PORT, IPERF_PORT));

    const direct = results[0]!;
    const socat = results[1]!;
    console.log('');
    console.log(
      `${'path'.padEnd(26)}${'connect ms'.padStart(11)}${'Gbit/s'.padStart(9)}${'conn/direct'.padStart(13)}${'Gbit/direct'.padStart(13)}`,
    );
    for (const r of results) {
      console.log(
        `${r.path.padEnd(26)}${r.connectMs.toFixed(3).padStart(11)}${r.gbps.toFixed(2).padStart(9)}${(r.connectMs / direct.connectMs).toFixed(2).padStart(13)}${(r.gbps / direct.gbps).toFixed(2).padStart(13)}`,
      );
    }
    console.log('\nratios (connect: lower is better, > 1 slower than the reference; throughput: higher is better)');
    const ratio = (a: Result, b: Result) =>
      `connect ${(a.connectMs / b.connectMs).toFixed(2).padStart(5)}   throughput ${(a.gbps / b.gbps).toFixed(2).padStart(5)}`;
    for (const f of results.filter((r) => r.path.startsWith('tsnet forward'))) {
      const b = f.path.match(/\((.*)\)/)![1]!;
      console.log(`  forward ${b.padEnd(8)} / direct  ${ratio(f, direct)}`);
    }
    console.log(`  socat            / direct  ${ratio(socat, direct)}`);
    for (const f of results.filter((r) => r.path.startsWith('tsnet forward'))) {
      const b = f.path.match(/\((.*)\)/)![1]!;
      console.log(`  forward ${b.padEnd(8)} / socat   ${ratio(f, socat)}`);
    }
  } finally {
    await Promise.all(children.map(stop));
    await Promise.all(servers.map((s) => s.stop()));
    for (const h of made.reverse()) {
      h.close();
      netns.del(h.name!);
    }
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  console.error(`bench: ${err.message}`);
  process.exitCode = 1;
});
