/**
 * 1,000 veth pairs, each with its peer inside a namespace and an address on
 * the peer, created three ways in one run:
 *   tsnet      the library, requests pipelined on one netlink socket (and one at a time)
 *   ip         one `ip` process per step, as a shell script would do it
 *   ip -batch  one `ip -batch` for the links, one `ip -n NS -batch` for the addresses (the floor)
 * Run with `npm run bench` (inside the sandbox).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as netns from '../src/netns';
import * as link from '../src/link';
import * as addr from '../src/addr';
import { assertSandbox } from '../test/harness/fixtures';

const N = Number(process.env.BENCH_N ?? 1000);
const PIPELINE = 64;
const addrFor = (i: number) => `10.${200 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`;

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

async function timed(name: string, fn: () => Promise<void> | void): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(`${name.padEnd(28)} ${ms.toFixed(0).padStart(7)} ms  ${(ms / N).toFixed(3)} ms/pair`);
  return ms;
}

async function tsnetPairs(host: netns.NetNs, ns: netns.NetNs, prefix: string, inFlight: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const i = next++;
      await link.add(host, { kind: 'veth', name: `${prefix}${i}`, peer: { name: `${prefix}p${i}`, netns: ns } });
      await addr.add(ns, addrFor(i), `${prefix}p${i}`);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

function verify(nsName: string, prefix: string): void {
  const r = spawnSync('ip', ['-n', nsName, '-o', '-4', 'addr', 'show'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const count = r.stdout.split('\n').filter((l) => l.includes(` ${prefix}p`)).length;
  if (count !== N) throw new Error(`${nsName}: expected ${N} addressed peers, found ${count}`);
}

async function main(): Promise<void> {
  assertSandbox();
  const host = netns.current();
  const made = ['bench-ts1', 'bench-ts64', 'bench-ip', 'bench-batch'].map((n) => {
    netns.del(n);
    return netns.add(n);
  });
  const [ts1, ts64] = made as [netns.NetNs, netns.NetNs];
  console.log(`${N} veth pairs, peer in a namespace, one address per peer (kernel ${os.release()})`);
  try {
    const tSeq = await timed('tsnet (one at a time)', () => tsnetPairs(host, ts1, 'ta', 1));
    const tPipe = await timed(`tsnet (${PIPELINE} in flight)`, () => tsnetPairs(host, ts64, 'tb', PIPELINE));
    const tIp = await timed('ip, one command per step', () => {
      for (let i = 0; i < N; i++) {
        ip(['link', 'add', `ia${i}`, 'type', 'veth', 'peer', 'name', `iap${i}`, 'netns', 'bench-ip']);
        ip(['-n', 'bench-ip', 'addr', 'add', addrFor(i), 'dev', `iap${i}`]);
      }
    });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-bench-'));
    const links = Array.from(
      { length: N },
      (_, i) => `link add ba${i} type veth peer name bap${i} netns bench-batch`,
    ).join('\n');
    const addrs = Array.from({ length: N }, (_, i) => `addr add ${addrFor(i)} dev bap${i}`).join('\n');
    fs.writeFileSync(path.join(dir, 'links'), `${links}\n`);
    fs.writeFileSync(path.join(dir, 'addrs'), `${addrs}\n`);
    const tBatch = await timed('ip -batch (floor)', () => {
      ip(['-batch', path.join(dir, 'links')]);
      ip(['-n', 'bench-batch', '-batch', path.join(dir, 'addrs')]);
    });
    fs.rmSync(dir, { recursive: true });
    verify('bench-ts1', 'ta');
    verify('bench-ts64', 'tb');
    verify('bench-ip', 'ia');
    verify('bench-batch', 'ba');
    console.log('\nratios (lower is faster; < 1 beats the reference):');
    console.log(`  tsnet one-at-a-time / ip per step : ${(tSeq / tIp).toFixed(3)}`);
    console.log(`  tsnet pipelined     / ip per step : ${(tPipe / tIp).toFixed(3)}`);
    console.log(`  tsnet one-at-a-time / ip -batch   : ${(tSeq / tBatch).toFixed(3)}`);
    console.log(`  tsnet pipelined     / ip -batch   : ${(tPipe / tBatch).toFixed(3)}`);
  } finally {
    for (const h of made) {
      h.close();
      netns.del(h.name!);
    }
    // The host ends go with their peers' namespaces; wait for the kernel to finish reaping them.
    for (let i = 0; i < 100 && (await link.list(host)).length > 1; i++) await new Promise((r) => setTimeout(r, 100));
  }
}

main().catch((err: Error) => {
  console.error(`bench: ${err.message}`);
  process.exit(1);
});
