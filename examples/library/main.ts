/**
 * tsnet as a library, for a whole job: a node with two containers on a
 * bridge, a service VIP balanced over both, and a port forward to one of
 * them; HTTP through each; then everything removed. Every namespace it uses
 * is its own (a "node" stands in for the host), so it runs anywhere as root
 * without touching the machine's network:
 *
 *   npm run build && node dist/examples/library/main.js
 *
 * The operations are those of the CLI, by their iproute2 / iptables names.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { attach, bridge, forward, nat, netns, route, type NetNs } from 'tsnet';

/** A program inside `ns` (its JavaScript never switches namespace: the process starts there). */
function inside(ns: NetNs, script: string, ...args: string[]): { status: number | null; out: string } {
  const r = ns.spawnSync(process.execPath, ['-e', script, ...args], { encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, out: `${String(r.stdout)}${String(r.stderr)}`.trim() };
}

/** An HTTP server in `ns` answering `name`, until `stop()`; one request per connection, so each GET is a new flow the service balances. */
async function httpServer(ns: NetNs, ip: string, port: number, name: string): Promise<{ stop(): void }> {
  const child = ns.spawn(
    process.execPath,
    [
      '-e',
      `require('http').createServer((q, r) => r.setHeader('connection', 'close').end(${JSON.stringify(name)})).listen(${port}, ${JSON.stringify(ip)}, () => console.log('up'))`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`server ${name} exited (${code})`)));
  });
  return { stop: () => child.kill() };
}

/** `count` HTTP GETs from inside `ns`: the bodies, counted. */
function get(ns: NetNs, url: string, count: number): Record<string, number> {
  const r = inside(
    ns,
    `(async () => { const seen = {}; for (let i = 0; i < ${count}; i++) { const b = await (await fetch(${JSON.stringify(url)})).text(); seen[b] = (seen[b] ?? 0) + 1; } console.log(JSON.stringify(seen)); })()`,
  );
  if (r.status !== 0) throw new Error(`GET ${url}: ${r.out}`);
  return JSON.parse(r.out) as Record<string, number>;
}

async function main(): Promise<void> {
  const tag = `lib${process.pid % 10000}`;
  const made = ['node', 'c1', 'c2'].map((n) => netns.add(`${tag}-${n}`)); // ip netns add ...
  const [node, c1, c2] = made as [NetNs, NetNs, NetNs];
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-example-'));
  const servers: { stop(): void }[] = [];
  try {
    await bridge.ensure(node, 'br0', { addresses: ['10.77.0.1/24'] }); // ip link add br0 type bridge; ip addr add; up
    await attach.attach(node, c1, { bridge: 'br0', address: '10.77.0.2/24', hairpin: true });
    await attach.attach(node, c2, { bridge: 'br0', address: '10.77.0.3/24', hairpin: true });
    await route.add(node, { dst: '10.96.0.0/16', dev: 'br0' }); // the service CIDR, as on a cluster node
    servers.push(await httpServer(c1, '10.77.0.2', 8080, 'c1'), await httpServer(c2, '10.77.0.3', 8080, 'c2'));

    // A service: iptables -t nat ... -m statistic --mode random -j DNAT, as nf_tables map elements.
    const engine = new nat.NatEngine({ ns: node, stateDir });
    const web = nat.normalizeService({
      name: 'example/web',
      vip: '10.96.0.10',
      port: 80,
      endpoints: [nat.parseEndpoint('10.77.0.2:8080'), nat.parseEndpoint('10.77.0.3:8080')],
    });
    const report = await engine.change([{ kind: 'add-service', service: web }]);
    console.log(`service example/web 10.96.0.10:80 -> c1, c2 (${report.backend}, ${report.ms.toFixed(1)} ms)`);
    const viaVip = get(node, 'http://10.96.0.10/', 30);
    console.log(`node -> 10.96.0.10:80, 30 requests: ${JSON.stringify(viaVip)}`);

    // A forward: the node's port 3308 to c2:8080 (tsnet forward 10.77.0.3 3308 8080).
    const f = await forward.add(engine, {
      target: '10.77.0.3',
      listenPort: 3308,
      targetPort: 8080,
      name: 'example-db',
    });
    const viaForward = get(c1, 'http://10.77.0.1:3308/', 5);
    console.log(`forward ${f.forward.name}: c1 -> 10.77.0.1:3308, 5 requests: ${JSON.stringify(viaForward)}`);

    if (Object.keys(viaVip).length !== 2 || viaVip.c1! + viaVip.c2! !== 30 || viaForward.c2 !== 5)
      throw new Error('traffic did not go where it should');
    await forward.remove(engine, 'example-db');
    await engine.change([{ kind: 'delete-service', name: 'example/web' }]);
    console.log('ok');
  } finally {
    for (const s of servers) s.stop();
    for (const ns of made) {
      ns.close();
      netns.del(ns.name!);
    } // ip netns del: its links, rules and sockets go with it
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`example: ${(err as Error).message}`);
  process.exitCode = 1;
});
