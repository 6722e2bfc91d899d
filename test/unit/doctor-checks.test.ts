/**
 * doctor's list of checks against what promises it: the README's doctor
 * paragraph names one finding per check, in the list's order, and
 * test/netns/doctor.test.ts has one test per check, titled by its name,
 * that breaks exactly that and fixes it.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CHECKS } from '../../src/inspect/doctor';

const ROOT = path.join(__dirname, '..', '..', '..');
/** Each check's name, and a word of the README's sentence about it. */
const EXPECTED: [name: string, word: string][] = [
  ['ip-forward', 'ip_forward'],
  ['br-netfilter', 'bridge-nf-call-iptables'],
  ['rp-filter', 'rp_filter'],
  ['bridge-port', 'bridge ports'],
  ['hairpin', 'hairpin'],
  ['masquerade', 'masquerade'],
  ['route-localnet', 'route_localnet'],
  ['conntrack', 'conntrack'],
  ['mtu', 'MTU'],
  ['cni-state', 'CNI'],
  ['nat-canary', 'canary'],
  ['forward-drop', 'policy drop'],
  ['cluster-vxlan', 'vxlan device'],
  ['cluster-mtu', 'MTU chain'],
  ['cluster-peers', 'peers'],
  ['cluster-lease', 'lease'],
  ['cluster-services', 'cluster services'],
];
const NAMES = EXPECTED.map(([name]) => name);

test('the checks, by stable name, in the order doctor reports them', (t) => {
  t.deepEqual(
    CHECKS.map((c) => c.name),
    NAMES,
  );
});

test("the README's doctor paragraph enumerates one finding per check", (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').replace(/\s+/g, ' ');
  const m =
    /\*\*doctor\*\* finds what breaks container networking without an error anywhere: (.*?)\. Each check has a test/.exec(
      readme,
    );
  t.truthy(m, 'the paragraph is there');
  const items = m![1]!.split(';').map((s) => s.trim());
  t.is(items.length, CHECKS.length, items.join('\n'));
  // The paragraph and the list say the same thing, in the same order.
  items.forEach((item, i) => t.true(item.includes(EXPECTED[i]![1]), `item ${i + 1} (${NAMES[i]}): ${item}`));
});

test('every check has its test in test/netns/doctor.test.ts, titled by its name', (t) => {
  const src = fs.readFileSync(path.join(ROOT, 'test', 'netns', 'doctor.test.ts'), 'utf8');
  const titled = [...src.matchAll(/^test\((['"`])([a-z-]+): /gm)].map((m) => m[2]);
  t.deepEqual(titled, NAMES);
});
