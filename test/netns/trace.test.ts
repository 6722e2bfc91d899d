/**
 * `tsnet trace` against what really happens, on every NAT backend: the
 * endpoint trace says the kernel holds a client to (its live flow, or its
 * affinity entry) is the endpoint that answered that client; weights show
 * as probabilities; an empty service is a REJECT; a forward names its
 * target; the way out names the bridge and the namespace there.
 *
 *   client 10.71.N.2 --br-cl-- node (10.71.N.1 | 10.72.N.1) --br0-- e1 10.72.N.11, e2 .12, e3 .13
 */
import test from 'ava';
import * as bridge from '../../src/bridge';
import { attach } from '../../src/attach';
import * as sysctl from '../../src/sysctl';
import type { NetNs } from '../../src/netns';
import { request, serve } from '../../src/demo/traffic';
import { backendLetter, natView, scratch } from '../harness/fixtures';

const { topo, servers, tmp, cleanup } = scratch('trc');
test.after.always(cleanup);

let seq = 0;
async function nodeFor(backend: string) {
  const n = ++seq;
  const node = await topo.ns(`${backendLetter(backend)}node`);
  const client = await topo.ns(`${backendLetter(backend)}cl`);
  await bridge.ensure(node, 'br0', { addresses: [`10.72.${n}.1/24`] });
  await bridge.ensure(node, 'br-cl', { addresses: [`10.71.${n}.1/24`] });
  await attach(node, client, { bridge: 'br-cl', address: `10.71.${n}.2/24` });
  const eps: NetNs[] = [];
  for (const i of [1, 2, 3]) {
    const e = await topo.ns(`${backendLetter(backend)}e${i}`);
    await attach(node, e, { bridge: 'br0', address: `10.72.${n}.1${i}/24`, hairpin: true });
    servers.push(await serve(e, 'http', '0.0.0.0', 8080, `e${i}`), await serve(e, 'udp', '0.0.0.0', 5353, `e${i}`));
    eps.push(e);
  }
  sysctl.set(node, 'net.ipv4.ip_forward', 1);
  const stateDir = tmp('trace');
  const view = natView(() => node.name!, backend, stateDir);
  const trace = (...args: string[]) => JSON.parse(view.ok('--json', 'trace', ...args).stdout);
  return { n, node, client, eps, ...view, trace, ep: (i: number) => `10.72.${n}.1${i}` };
}

for (const backend of ['netlink', 'nft', 'iptables'] as const) {
  test(`${backend}: weights as probabilities; a live flow's endpoint is the one that answered it; affinity names the pinned endpoint; REJECT and forwards`, async (t) => {
    const nd = await nodeFor(backend);
    const vip = `10.96.${nd.n}.10`;
    const client = `10.71.${nd.n}.2`;
    // Weighted UDP service: one flow (fixed source port) keeps its endpoint while its conntrack entry lives.
    nd.ok(
      'service',
      'add',
      'dns',
      '--vip',
      `${vip}:53`,
      '--proto',
      'udp',
      '--endpoint',
      `${nd.ep(1)}:5353@1`,
      '--endpoint',
      `${nd.ep(2)}:5353@3`,
    );
    const flow = await request(nd.client, 'udp', vip, 53, { count: 3, sourcePort: 41000 });
    t.is(flow.ok, 3, flow.errors.join('; '));
    const [answered] = Object.keys(flow.replies);
    const r = nd.trace(`${vip}:53`, '--proto', 'udp', '--from', client, '--sport', '41000');
    t.is(r.hit.kind, 'service');
    t.deepEqual(
      r.endpoints.map((e: any) => [e.ip, e.weight, e.probability]),
      [
        [nd.ep(1), 1, 0.25],
        [nd.ep(2), 3, 0.75],
      ],
    );
    t.is(r.chosen?.reason, 'flow');
    t.is(
      r.chosen?.endpoint,
      `${nd.ep(Number(answered!.slice(1)))}:5353`,
      `trace says ${r.chosen?.endpoint}, ${answered} answered`,
    );
    t.true(
      r.endpoints.every((e: any) => e.via.dev === 'br0' && e.via.namespace?.startsWith('trc-')),
      JSON.stringify(r.endpoints.map((e: any) => e.via)),
    );
    const served = r.endpoints.find((e: any) => e.ip === nd.ep(Number(answered!.slice(1))));
    t.true(served.counter.packets >= 1, 'the kernel counted the connection on the endpoint that served it');
    t.true(served.flows.count >= 1, 'and its live flow');

    // Affinity: whichever endpoint the first connection got, the client is pinned to it, and trace says so.
    nd.ok(
      'service',
      'add',
      'web',
      '--vip',
      `${vip}:80`,
      '--endpoint',
      `${nd.ep(1)}:8080`,
      '--endpoint',
      `${nd.ep(2)}:8080`,
      '--endpoint',
      `${nd.ep(3)}:8080`,
      '--affinity',
      '300',
    );
    const first = await request(nd.client, 'http', vip, 80, { count: 5 });
    t.is(first.ok, 5, first.errors.join('; '));
    const pinned = Object.keys(first.replies);
    t.is(pinned.length, 1, `affinity: one endpoint for the client, got ${JSON.stringify(first.replies)}`);
    const a = nd.trace(`${vip}:80`, '--from', client);
    t.is(a.hit.affinitySeconds, 300);
    t.deepEqual(a.chosen, { endpoint: `${nd.ep(Number(pinned[0]!.slice(1)))}:8080`, reason: 'affinity' });
    // A client nobody pinned: no chosen endpoint, the random choice by weight.
    t.is(nd.trace(`${vip}:80`, '--from', '10.71.99.99').chosen, undefined);

    // An empty service rejects; a forward names its target; an address tsnet does nothing for is routed.
    nd.ok('service', 'add', 'empty', '--vip', `${vip}:81`);
    t.is(nd.trace(`${vip}:81`).verdict, 'reject');
    nd.ok('forward', nd.ep(3), '3308', '8080', '--name', 'db');
    const f = nd.trace(`10.71.${nd.n}.1:3308`, '--from', client);
    t.is(f.hit.kind, 'forward');
    t.deepEqual([f.endpoints[0].ip, f.endpoints[0].via.namespace], [nd.ep(3), nd.eps[2]!.name]);
    t.regex(f.snat.join(' '), /masquerade/);
    const plain = nd.trace(`${nd.ep(1)}:8080`);
    t.is(plain.verdict, 'pass');
    t.deepEqual([plain.route.dev, plain.route.namespace], ['br0', nd.eps[0]!.name]);
    // The text form tells the same story.
    const text = nd.ok('trace', `${vip}:53`, '--proto', 'udp', '--from', client, '--sport', '41000').stdout;
    t.regex(text, /^service dns: 2 endpoints/m);
    t.regex(text, /weight 3 {2}p=0\.75/);
    t.regex(text, /the kernel holds 10\.71\.\d+\.2:41000 to .* \(its conntrack entry\)/);
  });
}
