/**
 * `tsnet topology` and the agent's live page. Three namespaces on a bridge
 * and one service: the JSON, dot and SVG hold every namespace, link and
 * endpoint; the agent's /topology, in a real browser (Debian's chromium,
 * driven by playwright-core), shows them, lists a clicked service's
 * endpoints with counters, and shows a container added through CNI without
 * a reload.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import * as addr from '../../src/addr';
import * as bridge from '../../src/bridge';
import * as link from '../../src/link';
import * as netns from '../../src/netns';
import * as route from '../../src/route';
import { attach } from '../../src/attach';
import { request, serve, type Server } from '../../src/demo/traffic';
import { CLI, Topology, natView } from '../harness/fixtures';
import { AgentProcess, CniInstall } from '../harness/cni';

const CHROMIUM = '/usr/bin/chromium';
const topo = new Topology('topo');
const cni = new CniInstall('topo');
const servers: Server[] = [];
const dirs: string[] = [];
let browser: Browser | undefined;
test.after.always(async () => {
  await browser?.close();
  await Promise.all(servers.map((s) => s.stop()));
  await cni.cleanup();
  topo.cleanup();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A node with br0 and three containers a, b, c on it, each serving HTTP on 8080. */
async function node(tag: string, n: number) {
  const nd = await topo.ns(`${tag}node`);
  await bridge.ensure(nd, 'br0', { addresses: [`10.68.${n}.1/24`] });
  const cs: netns.NetNs[] = [];
  for (const [i, name] of ['a', 'b', 'c'].entries()) {
    const c = await topo.ns(`${tag}${name}`);
    await attach(nd, c, { bridge: 'br0', address: `10.68.${n}.${i + 2}/24`, hairpin: true });
    servers.push(await serve(c, 'http', '0.0.0.0', 8080, name));
    cs.push(c);
  }
  return { nd, cs };
}

test('tsnet topology: JSON, dot and SVG hold every namespace, veth link, bridge and service endpoint', async (t) => {
  const { nd, cs } = await node('cli', 1);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-topo-'));
  dirs.push(stateDir);
  const v = natView(() => nd.name!, 'netlink', stateDir);
  v.ok(
    'service',
    'add',
    'web',
    '--vip',
    '10.96.1.10:80',
    '--endpoint',
    '10.68.1.2:8080',
    '--endpoint',
    '10.68.1.3:8080@2',
  );
  const j = JSON.parse(v.ok('topology').stdout) as {
    nodes: { id: string; kind: string; lines: string[] }[];
    edges: { kind: string; from: string; to: string; label: string }[];
  };
  const ids = j.nodes.map((x) => x.id);
  for (const c of cs) t.true(ids.includes(`ns:${c.name}`), `${c.name} in ${ids.join(' ')}`);
  t.true(ids.includes('br:br0') && ids.includes('svc:web') && ids.includes(`ns:${nd.name}`));
  t.deepEqual(
    j.edges
      .filter((e) => e.kind === 'veth')
      .map((e) => [e.from, e.to])
      .sort(),
    cs.map((c) => ['br:br0', `ns:${c.name}`]).sort(),
  );
  t.deepEqual(
    j.edges.filter((e) => e.kind === 'member').map((e) => [e.from, e.to]),
    [[`ns:${nd.name}`, 'br:br0']],
  );
  t.deepEqual(
    j.edges.filter((e) => e.kind === 'endpoint').map((e) => [e.to, e.label.replace(/ \(\d+\)$/, '')]),
    [
      [`ns:${cs[0]!.name}`, '10.68.1.2:8080'],
      [`ns:${cs[1]!.name}`, '10.68.1.3:8080 w2'],
    ],
  );
  t.true(j.nodes.find((x) => x.id === `ns:${cs[2]!.name}`)!.lines.includes('eth0 10.68.1.4/24'));
  const dot = v.ok('topology', '--dot').stdout;
  t.regex(dot, /^digraph tsnet \{/);
  t.regex(dot, new RegExp(`"br:br0" -> "ns:${cs[0]!.name}"`));
  t.regex(dot, /"svc:web" -> /);
  const file = path.join(stateDir, 'topo.svg');
  v.ok('topology', '--svg', file);
  const svg = fs.readFileSync(file, 'utf8');
  t.regex(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="\d+" height="\d+"/);
  for (const c of cs) t.true(svg.includes(`data-id="ns:${c.name}"`), c.name!);
  t.is((svg.match(/class="edge veth"/g) ?? []).length, 3);
  t.true(svg.includes('data-service="web"'));
  // Laid out, not stacked: no two boxes at the same place.
  const places = [...svg.matchAll(/transform="translate\(([\d.]+),([\d.]+)\)"/g)].map((m) => `${m[1]},${m[2]}`);
  t.is(new Set(places).size, places.length);
});

test("the agent's /topology page in chromium: every namespace and link, a clicked service's endpoints with counters, a CNI container appearing without a reload", async (t) => {
  t.timeout(120_000);
  const { nd, cs } = await node('ag', 2);
  // A link from this (the test's) namespace to the node, so the browser here reaches the agent's listener there.
  await link.add(netns.current(), { kind: 'veth', name: 'topo-up0', up: true, peer: { name: 'topo-up1', netns: nd } });
  await link.setUp(nd, 'topo-up1');
  await addr.add(netns.current(), '10.79.2.1/30', 'topo-up0');
  await addr.add(nd, '10.79.2.2/30', 'topo-up1');
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-topo-agent-'));
  dirs.push(stateDir);
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-topo-sock-'));
  dirs.push(sockDir);
  fs.chmodSync(sockDir, 0o700);
  const agent = new AgentProcess(
    nd,
    path.join(sockDir, 'agent.sock'),
    ['--metrics', '10.79.2.2:0', '--resync-interval', '1s'],
    stateDir,
  );
  cni.agents.set(nd.name!, agent);
  const { metrics } = await agent.ready;
  t.truthy(metrics);
  // A service in the agent's own state (the CLI run inside the node, as an operator on it would).
  const add = nd.spawnSync(
    process.execPath,
    [
      CLI,
      '--state-dir',
      stateDir,
      'service',
      'add',
      'web',
      '--vip',
      '10.96.2.10:80',
      '--endpoint',
      '10.68.2.2:8080',
      '--endpoint',
      '10.68.2.3:8080',
    ],
    { encoding: 'utf8' },
  );
  t.is(add.status, 0, String(add.stderr));
  await route.add(nd, { dst: '10.96.2.0/24', dev: 'br0' }); // the service CIDR, routed as on a cluster node
  const calls = await request(nd, 'http', '10.96.2.10', 80, { count: 10 });
  t.is(calls.ok, 10, calls.errors.join('; '));

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage();
  await page.goto(`http://${metrics}/topology`);
  await page.waitForSelector('svg [data-service="web"]', { timeout: 15_000 });
  for (const c of cs) {
    t.is(await page.locator(`svg [data-id="ns:${c.name}"]`).count(), 1, `${c.name} on the page`);
    t.is(await page.locator(`svg [data-edge="veth:${c.name}:eth0"]`).count(), 1, `${c.name}'s veth link`);
  }
  t.is(await page.locator('svg [data-id="br:br0"]').count(), 1);
  t.is(await page.locator('svg .edge.endpoint').count(), 2, 'two endpoints');
  await page.locator('svg [data-service="web"]').click();
  await page.waitForSelector('#endpoints');
  const rows = await page.locator('#endpoints tr').allInnerTexts();
  t.is(rows.length, 3, rows.join(' | '));
  const conns = rows.slice(1).map((r) => Number(r.split('\t')[2]));
  t.is(
    conns.reduce((a, b) => a + b, 0),
    10,
    `the kernel's counters per endpoint: ${rows.join(' | ')}`,
  );

  // A container added through CNI (served by the agent) appears without a reload.
  const c4 = await topo.ns('agd');
  const conf = {
    cniVersion: '1.1.0',
    name: 'topo',
    type: 'tsnet-bridge',
    bridge: 'br0',
    isGateway: true,
    stateDir: path.join(stateDir, 'cni-state'),
    ipam: {
      type: 'tsnet-ipam',
      subnet: '10.68.2.0/24',
      rangeStart: '10.68.2.50',
      dataDir: path.join(stateDir, 'ipam'),
    },
  };
  const r = await cni.call(nd, 'tsnet-bridge', 'ADD', conf, { containerId: 'topo-d', netns: c4.path, ifname: 'eth0' });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.is(r.servedBy, 'agent');
  await page.waitForSelector(`svg [data-id="ns:${c4.name}"]`, { timeout: 15_000 });
  t.is(await page.locator(`svg [data-edge="veth:${c4.name}:eth0"]`).count(), 1, 'with its veth link');
  t.true(
    await page.locator('#service-title').isVisible(),
    'the same page: no reload happened (the clicked service is still shown)',
  );
  t.is(
    (await cni.call(nd, 'tsnet-bridge', 'DEL', conf, { containerId: 'topo-d', netns: c4.path, ifname: 'eth0' })).status,
    0,
  );
  await agent.stop();
  await link.del(netns.current(), 'topo-up0');
});
