/**
 * `tsnet demo`: tsnet's main job end to end, in a private sandbox, with no
 * configuration. Builds Docker's bridge model (a bridge with a gateway
 * address, two namespaces attached to it), proves TCP flows container to
 * container and container to gateway, shows the veth -> namespace map, puts
 * a kube-proxy-style service VIP in front of both containers and a
 * `tsnet forward` in front of one, then tears everything down and checks
 * nothing is left.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NatEngine } from '../nat/engine';
import * as forward from '../forward';
import * as route from '../route';
import * as netns from '../netns';
import * as bridge from '../bridge';
import * as veth from '../veth';
import * as link from '../link';
import { attach, detach } from '../attach';
import { serve, request } from './traffic';
import { table } from '../format/table';
import { trace } from '../inspect/trace';
import { doctor, formatProblems } from '../inspect/doctor';
import { inspectNode } from '../inspect/node';
import { topology, toSvg } from '../inspect/topology';

const BR = 'tsnet0';

export interface DemoOptions {
  /** Also write the topology picture (SVG) here, while everything is up. */
  svg?: string;
}

/** What the demo's steps share: where they print, and what they made (for the teardown). */
interface Demo {
  host: netns.NetNs;
  log: (line: string) => void;
  /** Prints the command a step stands for. */
  step: (cmd: string) => void;
  /** The namespaces made, and the servers started in them: removed and stopped whatever happens. */
  made: netns.NetNs[];
  servers: { stop(): Promise<void> }[];
}

export async function demo(
  log: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
  o: DemoOptions = {},
): Promise<void> {
  const d: Demo = { host: netns.current(), log, step: (cmd) => log(`\n$ ${cmd}`), made: [], servers: [] };
  try {
    const [c1, c2] = await buildNetwork(d);
    await directTraffic(d, c1, c2);
    await throughNat(d, c1, o);
    await showVeths(d);
  } finally {
    await teardown(d);
  }
  await verifyNothingLeft(d);
}

/** The bridge with its gateway address, and two namespaces attached to it. */
async function buildNetwork(d: Demo): Promise<[netns.NetNs, netns.NetNs]> {
  const { host, log, step, made } = d;
  step(
    `tsnet bridge add ${BR} --address 10.88.0.1/16      # ip link add ${BR} type bridge; ip addr add ...; ip link set ${BR} up`,
  );
  const br = await bridge.ensure(host, BR, { addresses: ['10.88.0.1/16'] });
  log(`bridge ${br.name} ifindex ${br.index} mac ${br.mac} stp ${br.bridge?.stp ? 'on' : 'off'}`);

  for (const [name, ip] of [
    ['demo-c1', '10.88.0.2'],
    ['demo-c2', '10.88.0.3'],
  ] as const) {
    step(`tsnet netns add ${name} && tsnet attach ${name} --bridge ${BR} --address ${ip}/16`);
    const ns = netns.add(name);
    made.push(ns);
    // hairpin: a container reaching a service VIP may be balanced back to itself (as CNI's hairpinMode).
    const a = await attach(host, ns, { bridge: BR, address: `${ip}/16`, hairpin: true });
    log(`${name}: ${a.ifname} ${a.address} mac ${a.mac} via ${a.gateway}, host end ${a.hostIfname}`);
  }
  return made as [netns.NetNs, netns.NetNs];
}

/** TCP container to container over the bridge, and container to its gateway. */
async function directTraffic(d: Demo, c1: netns.NetNs, c2: netns.NetNs): Promise<void> {
  const { host, log, step, servers } = d;
  step('TCP server in demo-c2 on 10.88.0.3:8080, and one on the gateway 10.88.0.1:8081');
  servers.push(await serve(c2, 'tcp', '10.88.0.3', 8080, 'hello from demo-c2'));
  servers.push(await serve(host, 'tcp', '10.88.0.1', 8081, 'hello from the gateway'));

  step('demo-c1 -> 10.88.0.3:8080 (container to container over the bridge), 20 connections');
  const r1 = await request(c1, 'tcp', '10.88.0.3', 8080, { count: 20, concurrency: 5 });
  log(`${r1.ok}/20 answered: ${JSON.stringify(r1.replies)}`);
  step('demo-c1 -> 10.88.0.1:8081 (container to its gateway)');
  const r2 = await request(c1, 'tcp', '10.88.0.1', 8081);
  log(`${r2.ok}/1 answered: ${JSON.stringify(r2.replies)}`);
  if (r1.ok !== 20 || r2.ok !== 1) throw new Error(`traffic failed: ${[...r1.errors, ...r2.errors].join('; ')}`);
}

/** A service VIP in front of both containers and a forward in front of one, looked at, then removed. */
async function throughNat(d: Demo, c1: netns.NetNs, o: DemoOptions): Promise<void> {
  d.servers.push(await serve(c1, 'tcp', '10.88.0.2', 8080, 'hello from demo-c1'));
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-demo-'));
  const nat = new NatEngine({ ns: d.host, stateDir });
  try {
    await serviceAndForward(d, nat, c1);
    await look(d, nat, stateDir, o);
  } finally {
    d.step('tsnet forward rm demo-db && tsnet service del demo/web      # rules gone, sysctls restored');
    await forward.remove(nat, 'demo-db').catch(() => false);
    await nat.change([{ kind: 'delete-service', name: 'demo/web' }]).catch(() => undefined);
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

/** The service (routed, synced, load balanced from this host), then the forward (from a container and from this host). */
async function serviceAndForward(d: Demo, nat: NatEngine, c1: netns.NetNs): Promise<void> {
  const { host, log, step } = d;
  step('tsnet route add 10.96.0.0/16 --dev tsnet0      # the service CIDR, routed as on a cluster node');
  await route.add(host, { dst: '10.96.0.0/16', dev: BR });
  step('tsnet service add demo/web --vip 10.96.0.10:80 --endpoint 10.88.0.2:8080 --endpoint 10.88.0.3:8080');
  const sync = await nat.change([
    {
      kind: 'add-service',
      service: {
        name: 'demo/web',
        vip: '10.96.0.10',
        port: 80,
        proto: 'tcp',
        endpoints: [
          { ip: '10.88.0.2', port: 8080, weight: 1 },
          { ip: '10.88.0.3', port: 8080, weight: 1 },
        ],
      },
    },
  ]);
  log(
    `synced with ${sync.backend} (${sync.full ? 'full' : 'partial'}, ${sync.ms.toFixed(1)} ms): the VIP is an element of a verdict map, each endpoint an element of the endpoint map`,
  );
  step('this host -> 10.96.0.10:80 (the VIP, load balanced by DNAT in nat OUTPUT), 40 connections');
  const r3 = await request(host, 'tcp', '10.96.0.10', 80, { count: 40, concurrency: 5 });
  log(`${r3.ok}/40 answered: ${JSON.stringify(r3.replies)}`);
  step("tsnet forward 10.88.0.3 3308 8080 --name demo-db      # this host's port 3308 now reaches demo-c2:8080");
  await forward.add(nat, { target: '10.88.0.3', listenPort: 3308, targetPort: 8080, name: 'demo-db' });
  const r4 = await request(c1, 'tcp', '10.88.0.1', 3308, { count: 10, concurrency: 5 });
  const r5 = await request(host, 'tcp', '127.0.0.1', 3308, { count: 10, concurrency: 5 });
  log(
    `demo-c1 -> 10.88.0.1:3308: ${r4.ok}/10 ${JSON.stringify(r4.replies)}; this host -> 127.0.0.1:3308: ${r5.ok}/10 ${JSON.stringify(r5.replies)}`,
  );
  if (r3.ok !== 40 || Object.keys(r3.replies).length !== 2 || r4.ok !== 10 || r5.ok !== 10) {
    throw new Error(`NAT traffic failed: ${[...r3.errors, ...r4.errors, ...r5.errors].join('; ')}`);
  }
}

/** Looking at it: the path of a connection, what is wrong, and the picture. */
async function look(d: Demo, nat: NatEngine, stateDir: string, o: DemoOptions): Promise<void> {
  const { host, log, step } = d;
  step('tsnet trace 10.96.0.10:80 --from 10.88.0.2      # the path of a connection from demo-c1 to the VIP');
  log((await trace(nat, { dest: '10.96.0.10', port: 80, proto: 'tcp', from: '10.88.0.2' })).steps.join('\n'));
  step('tsnet doctor      # what would break (here: the demo never routes its containers off the node)');
  const problems = await doctor(host, { engines: [nat], stateDirs: [stateDir] });
  log(formatProblems(problems));
  if (o.svg) {
    step(`tsnet topology --svg ${o.svg}`);
    fs.writeFileSync(o.svg, await toSvg(topology(await inspectNode(host, [nat]))));
    log(`wrote ${o.svg}`);
  }
}

/** `tsnet veth ls`: which host veth belongs to which namespace. */
async function showVeths(d: Demo): Promise<void> {
  d.step('tsnet veth ls      # which host veth belongs to which namespace');
  const pairs = await veth.list(d.host);
  d.log(
    table(
      pairs.map((p) => ({
        name: p.name,
        master: p.master,
        peer: p.peer.name,
        'peer-ifindex': p.peer.index,
        netns: p.peer.netns.name ?? p.peer.netns.pid ?? p.peer.netns.nsid,
      })),
      ['name', 'master', 'peer', 'peer-ifindex', 'netns'],
    ),
  );
}

/** Servers stopped, namespaces detached and deleted, the bridge deleted: whatever step failed. */
async function teardown(d: Demo): Promise<void> {
  for (const s of d.servers) await s.stop();
  d.step('cleanup: tsnet detach, tsnet netns del, tsnet bridge del');
  for (const ns of d.made) {
    await detach(ns).catch(() => false);
    ns.close();
    netns.del(ns.name!);
  }
  await bridge.del(d.host, BR).catch(() => false);
}

/** No link but lo and no namespace left: the demo cleaned up after itself. */
async function verifyNothingLeft(d: Demo): Promise<void> {
  const left = (await link.list(d.host)).filter((l) => l.name !== 'lo').map((l) => l.name);
  if (left.length || netns.list().length)
    throw new Error(`cleanup incomplete: links ${left.join(',')} namespaces ${netns.list().join(',')}`);
  d.log(
    'nothing left behind.\n\ndemo OK: bridge, namespaces, veth pairs, addresses and routes built over rtnetlink; TCP flowed directly, through a service VIP, and through a port forward.',
  );
}
