import test from 'ava';
import { Address4 } from 'ip-address';
import { parseCidr, parseIp, contains } from '../../src/addr/cidr';
import { validateIfname, validateMac, validateMtu } from '../../src/link';
import { stableMac } from '../../src/bridge';
import { validateName } from '../../src/netns';

test('CIDR parsing: canonical address, prefix and network', (t) => {
  t.deepEqual(parseCidr('10.88.0.2/16'), { family: 4, address: '10.88.0.2', prefix: 16, network: '10.88.0.0' });
  t.deepEqual(parseCidr('fd00:0::2/64'), { family: 6, address: 'fd00::2', prefix: 64, network: 'fd00::' });
  t.is(parseCidr('10.1.2.3', { defaultPrefix: true }).prefix, 32);
});

test('bad CIDRs are refused with a message naming the input', (t) => {
  for (const bad of [
    '10.0.0.1',
    '10.0.0.300/24',
    '10.0.0.1/33',
    'fd00::1/129',
    '10.0.0.1/24/1',
    'eth0/24',
    '',
    '10.0.0.1/-1',
    '10.0.0.1/',
  ]) {
    const err = t.throws(() => parseCidr(bad), undefined, bad);
    t.true(err!.message.includes(JSON.stringify(bad)) || bad === '', err!.message);
    t.false(err!.message.includes('\n'));
  }
});

test('IP parsing and subnet membership', (t) => {
  t.deepEqual(parseIp('fd00::0001'), { family: 6, address: 'fd00::1' });
  t.throws(() => parseIp('10.0.0.1/24'));
  t.true(contains(parseCidr('10.88.0.0/16'), '10.88.255.1'));
  t.false(contains(parseCidr('10.88.0.0/16'), '10.89.0.1'));
  t.false(contains(parseCidr('10.88.0.0/16'), 'fd00::1'));
});

test('interface names follow the kernel rules (15 bytes, no / : or space)', (t) => {
  t.notThrows(() => validateIfname('a23456789012345'));
  t.regex(t.throws(() => validateIfname('a234567890123456'))!.message, /16 bytes; Linux allows at most 15/);
  for (const bad of ['', '.', '..', 'a/b', 'a:b', 'a b']) t.throws(() => validateIfname(bad), undefined, bad);
  t.throws(() => validateIfname('ééééééééé'), undefined, 'multi-byte names count bytes');
});

test('MAC and MTU validation', (t) => {
  t.notThrows(() => validateMac('02:42:ac:11:00:02'));
  t.throws(() => validateMac('01:00:5e:00:00:01'), { message: /multicast/ });
  t.throws(() => validateMac('02:42:ac:11:00'));
  t.throws(() => validateMtu(67));
  t.throws(() => validateMtu(1500.5));
  t.notThrows(() => validateMtu(9000));
});

test('namespace names are plain file names', (t) => {
  t.notThrows(() => validateName('c1'));
  for (const bad of ['', '.', '..', '../etc', 'a/b']) t.throws(() => validateName(bad), undefined, bad);
});

test('stable bridge MAC: deterministic, unicast, locally administered, distinct per name', (t) => {
  const a = stableMac('br0');
  t.is(a, stableMac('br0'));
  t.not(a, stableMac('br1'));
  const first = parseInt(a.slice(0, 2), 16);
  t.is(first & 1, 0);
  t.is(first & 2, 2);
  t.notThrows(() => validateMac(a));
});

test('the sandbox (npm test, demo, bench) refuses non-root with a clear one-line reason', async (t) => {
  const { requireRoot } = await import('../../src/sandbox');
  const err = t.throws(() => requireRoot('the tsnet sandbox', 1000));
  t.is(err!.message, 'the tsnet sandbox needs root (network namespaces, bind mounts): run it with sudo or as root');
  t.notThrows(() => requireRoot('the tsnet sandbox', 0));
});

test("parseCidr's IPv4 network (32-bit arithmetic) agrees with ip-address's for 2,000 random addresses and every prefix", (t) => {
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 256;
  for (let i = 0; i < 2000; i++) {
    const ip = [rnd(), rnd(), rnd(), rnd()].join('.');
    const prefix = i % 33;
    const want = new Address4(`${ip}/${prefix}`).startAddress().correctForm();
    t.is(parseCidr(`${ip}/${prefix}`).network, want, `${ip}/${prefix}`);
  }
});
