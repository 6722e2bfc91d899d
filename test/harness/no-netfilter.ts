/**
 * Run by test/netns/no-netfilter.test.ts inside a sandbox whose /usr/sbin is
 * an empty tmpfs (no iptables, nft, ip, conntrack...): tsnet's main jobs with
 * nothing but the kernel. Prints one JSON line with what happened.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as netns from '../../src/netns';
import * as bridge from '../../src/bridge';
import { attach } from '../../src/attach';
import { demo } from '../../src/demo';
import { invoke } from '../../src/cni';
import { serve, request } from '../../src/demo/traffic';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

async function main(): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const which = (tool: string) =>
    ['/usr/sbin', '/sbin', '/usr/local/sbin', '/usr/bin', '/bin'].some((d) => fs.existsSync(path.join(d, tool)));
  out.toolsPresent = ['iptables', 'iptables-save', 'iptables-restore', 'iptables-nft', 'ip6tables', 'nft'].filter(
    which,
  );

  let lines = 0;
  await demo(() => {
    lines++;
  });
  out.demo = lines;

  // A service and a forward through the CLI, as an operator would, on the default backend.
  const host = netns.current();
  const ep = netns.add('nonf-ep');
  await bridge.ensure(host, 'nonfbr', { addresses: ['10.77.0.1/24'] });
  await attach(host, ep, { bridge: 'nonfbr', address: '10.77.0.2/24' });
  const srv = await serve(ep, 'tcp', '0.0.0.0', 8080, 'ep');
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-nonf-'));
  try {
    const svc = cli(
      '--state-dir',
      stateDir,
      'service',
      'add',
      'web',
      '--vip',
      '10.96.7.1:80',
      '--endpoint',
      '10.77.0.2:8080',
    );
    out.serviceAdd = svc.status === 0 ? 'ok' : svc.stderr.trim();
    // A route for the VIPs, so locally generated traffic reaches nat OUTPUT.
    const r1 = cli('route', 'add', '10.96.7.0/24', '--dev', 'nonfbr');
    out.route = r1.status === 0 ? 'ok' : r1.stderr.trim();
    out.serviceTraffic = (await request(host, 'tcp', '10.96.7.1', 80, { count: 5 })).replies;
    const fwd = cli('--state-dir', stateDir, 'forward', '10.77.0.2', '3308', '8080', '--name', 'db');
    out.forward = fwd.status === 0 ? 'ok' : fwd.stderr.trim();
    out.forwardTraffic = (await request(host, 'tcp', '127.0.0.1', 3308, { count: 5 })).replies;
    const ls = cli('--state-dir', stateDir, '--json', 'service', 'ls');
    out.counters = ls.status === 0 ? JSON.parse(ls.stdout)[0].counters.service.packets : ls.stderr.trim();
    out.cleanup = [
      cli('--state-dir', stateDir, 'forward', 'rm', 'db').status,
      cli('--state-dir', stateDir, 'service', 'del', 'web').status,
    ];
  } finally {
    await srv.stop();
    ep.close();
    netns.del('nonf-ep');
  }

  // A CNI ADD with ipMasq and a port mapping, and its DEL: one library call each, as the plugin and the agent make them.
  const c = netns.add('nonf-c');
  const conf = {
    cniVersion: '1.1.0',
    name: 'nonf',
    type: 'tsnet-bridge',
    bridge: 'nonfcni',
    isGateway: true,
    ipMasq: true,
    capabilities: { portMappings: true },
    runtimeConfig: { portMappings: [{ hostPort: 18081, containerPort: 80, protocol: 'tcp' }] },
    stateDir: path.join(stateDir, 'cni'),
    ipam: { type: 'tsnet-ipam', subnet: '10.78.0.0/24', dataDir: path.join(stateDir, 'ipam') },
  };
  const env = { CNI_CONTAINERID: 'nonf1', CNI_NETNS: c.path, CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' };
  const add = await invoke('tsnet-bridge', { ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
  out.cniAdd = add.exitCode === 0 ? 'ok' : add.stdout.trim();
  const csrv = await serve(c, 'tcp', '0.0.0.0', 80, 'container');
  out.cniPortMapping = (await request(host, 'tcp', '127.0.0.1', 18081, { count: 3 })).replies;
  await csrv.stop();
  const del = await invoke('tsnet-bridge', { ...env, CNI_COMMAND: 'DEL' }, JSON.stringify(conf));
  out.cniDel = del.exitCode === 0 ? 'ok' : del.stdout.trim();
  c.close();
  netns.del('nonf-c');
  fs.rmSync(stateDir, { recursive: true, force: true });
  return out;
}

main().then(
  (o) => process.stdout.write(`${JSON.stringify(o)}\n`),
  (err: Error) => {
    process.stdout.write(`${JSON.stringify({ error: err.message })}\n`);
    process.exitCode = 1;
  },
);
