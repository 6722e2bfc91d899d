/**
 * Child of bench/nat.ts: a process that holds a big table (a full sync of
 * the services in FILE, then 50 one-service changes) and reports its peak
 * RSS. Usage: node nat-rss.js NETNS STATE_DIR FILE
 */
import * as fs from 'node:fs';
import * as netns from '../src/netns';
import { NatEngine } from '../src/nat/engine';
import type { Service } from '../src/nat/model';

async function main(): Promise<void> {
  const [name, dir, file] = process.argv.slice(2) as [string, string, string];
  const ns = netns.open(name);
  const svcs = JSON.parse(fs.readFileSync(file, 'utf8')) as Service[];
  const e = new NatEngine({ ns, stateDir: dir });
  await e.change([{ kind: 'replace-services', services: svcs }]);
  for (let k = 0; k < 50; k++) {
    const s = svcs[(k * 131) % svcs.length]!;
    await e.change([
      { kind: 'set-endpoints', name: s.name, endpoints: [{ ip: `10.252.0.${k}`, port: 8080, weight: 1 }] },
    ]);
  }
  ns.close();
  process.stdout.write(`${JSON.stringify({ maxRssKiB: process.resourceUsage().maxRSS })}\n`);
}

main().catch((err) => {
  console.error(`nat-rss: ${(err as Error).message}`);
  process.exitCode = 1;
});
