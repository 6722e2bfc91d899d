/**
 * The tsnet CLI (run by main.ts): commander wiring only. Each command parses, calls the
 * library, prints (a table, or --json). Errors are one line on stderr and a
 * non-zero exit.
 *
 * Library modules are imported inside the actions, so a command loads what
 * it uses and nothing else (`tsnet --version` loads no netlink code).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { PACKAGE_ROOT } from '../native';
import type { NetNs } from '../netns';
import type { LinkChange } from '../link';
import type { BridgeOptions } from '../bridge';
import type { PeerNamespace, VethOptions } from '../veth';
import type { RouteSpec } from '../route';
import { invalid } from '../errors';
import { BACKEND_CHOICES, type BackendChoice } from '../nat/backends';
import { print, table } from './output';

const program = new Command('tsnet')
  .description('Network plumbing for Linux containers: namespaces, veth pairs, bridges, addresses and routes over rtnetlink; kube-proxy-style NAT')
  .option('-n, --netns <ns>', 'run the command inside this namespace (name, pid, or path)')
  .version((JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version)
  .option('-j, --json', 'print listings and reports as JSON')
  .option('--state-dir <dir>', "tsnet's state: NAT desired state, IPAM leases, CNI records (default $TSNET_STATE_DIR or /var/lib/tsnet)")
  .addOption(new Option('--backend <name>', 'NAT backend (auto: netlink, or iptables when the state was written with it)').choices(BACKEND_CHOICES))
  // Global options come before the command, as with ip(8): `tsnet -j -n c1 link ls`. Nothing after the command shadows them.
  .enablePositionalOptions()
  .showHelpAfterError()
  .exitOverride();

let opened: NetNs | undefined;
/** The handle the command acts on: --netns, or the current namespace. */
async function ns(): Promise<NetNs> {
  const netns = await import('../netns');
  const ref = program.opts<{ netns?: string }>().netns;
  if (!ref) return netns.current();
  return (opened ??= netns.resolve(ref));
}
const json = () => program.opts<{ json?: boolean }>().json === true;
const stateDir = () => program.opts<{ stateDir?: string }>().stateDir;

function int(name: string) {
  return (v: string) => {
    if (!/^\d+$/.test(v)) throw invalid(`${name} must be a whole number, got ${JSON.stringify(v)}`);
    return Number(v);
  };
}

// --- netns -------------------------------------------------------------------
/** netns add|del|ls|exec */
function registerNetns(): void {
  const nsCmd = program.command('netns').description('named network namespaces (ip netns)');
  nsCmd
    .command('add <name>')
    .description('create /run/netns/NAME (existing: no-op)')
    .action(async (name: string) => {
      (await import('../netns')).add(name, { existOk: true }).close();
    });
  nsCmd
    .command('del <name>')
    .description('delete /run/netns/NAME (missing: no-op)')
    .action(async (name: string) => {
      (await import('../netns')).del(name);
    });
  nsCmd
    .command('ls')
    .alias('list')
    .description('list named namespaces')
    .action(async () => {
      const netns = await import('../netns');
      const rows = netns.list().map((name) => {
        let inode: number | undefined;
        try {
          const h = netns.open(name);
          inode = h.inode;
          h.close();
        } catch {
          /* a stale file: listed without an inode */
        }
        return { name, inode };
      });
      print(rows, json(), () => table(rows, ['name', 'inode']));
    });
  nsCmd.enablePositionalOptions();
  nsCmd
    .command('exec <name> <cmd> [args...]')
    .description('run CMD inside the namespace (ip netns exec)')
    .passThroughOptions()
    .action(async (name: string, cmd: string, args: string[]) => {
      const h = (await import('../netns')).resolve(name);
      const child = h.spawn(cmd, args, { stdio: 'inherit' });
      h.close();
      const code = await new Promise<number>((resolve) => {
        child.on('error', (err) => {
          console.error(`tsnet: cannot run ${cmd} in namespace ${name}: ${err.message}`);
          resolve(127);
        });
        child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1)));
      });
      process.exitCode = code;
    });
}

// --- link --------------------------------------------------------------------
/** link ls|set|del */
function registerLink(): void {
  const linkCmd = program.command('link').description('links of any kind (ip link)');
  linkCmd
    .command('ls')
    .alias('list')
    .description('list links with kind, master and peer')
    .action(async () => {
      const links = await (await import('../link')).list(await ns());
      const names = new Map(links.map((l) => [l.index, l.name]));
      const rows = links.map((l) => ({ ...l, state: l.up ? 'up' : 'down', masterName: l.master === undefined ? undefined : names.get(l.master) }));
      print(links, json(), () => table(rows, ['index', 'name', 'kind', 'state', 'mtu', 'mac', 'masterName']));
    });
  linkCmd
    .command('set <dev>')
    .description('set state, name, mtu, mac, master')
    .option('--up')
    .option('--down')
    .option('--name <name>')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--mac <mac>')
    .option('--master <bridge>')
    .option('--nomaster')
    .action(async (dev: string, o: { up?: boolean; down?: boolean; name?: string; mtu?: number; mac?: string; master?: string; nomaster?: boolean }) => {
      const link = await import('../link');
      const h = await ns();
      const change: LinkChange = {};
      if (o.up || o.down) change.up = !!o.up;
      if (o.name) change.name = o.name;
      if (o.mtu !== undefined) change.mtu = o.mtu;
      if (o.mac) change.mac = o.mac;
      if (o.master) change.master = (await link.mustGet(h, o.master)).index;
      if (o.nomaster) change.master = null;
      await link.set(h, dev, change);
    });
  linkCmd
    .command('del <dev>')
    .description('delete a link (missing: no-op)')
    .action(async (dev: string) => {
      await (await import('../link')).del(await ns(), dev);
    });
}

// --- bridge ------------------------------------------------------------------
/** bridge add|del|ls|port */
function registerBridge(): void {
  const brCmd = program.command('bridge').description('Linux bridges (ip link type bridge, brctl)');
  brCmd
    .command('add <name>')
    .description('create the bridge, or bring an existing one to these options')
    .option('--address <cidr>', 'gateway address on the bridge (repeatable)', (v: string, acc: string[] = []) => [...acc, v])
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--vlan-filtering', 'enable VLAN filtering')
    .option('--stp', 'enable spanning tree (off by default)')
    .action(async (name: string, o: { address?: string[]; mtu?: number; vlanFiltering?: boolean; stp?: boolean }) => {
      const opts: BridgeOptions = { stp: !!o.stp };
      if (o.address) opts.addresses = o.address;
      if (o.mtu !== undefined) opts.mtu = o.mtu;
      if (o.vlanFiltering) opts.vlanFiltering = true;
      await (await import('../bridge')).ensure(await ns(), name, opts);
    });
  brCmd
    .command('del <name>')
    .description('delete the bridge (missing: no-op)')
    .action(async (name: string) => {
      await (await import('../bridge')).del(await ns(), name);
    });
  brCmd
    .command('ls')
    .alias('list')
    .description('bridges with their ports')
    .action(async () => {
      const brs = await (await import('../bridge')).list(await ns());
      print(brs, json(), () =>
        table(
          brs.map((b) => ({ ...b, state: b.up ? 'up' : 'down', stp: b.stp ? 'on' : 'off', ports: b.ports.map((p) => p.name) })),
          ['name', 'state', 'mac', 'mtu', 'stp', 'addresses', 'ports'],
        ),
      );
    });
  brCmd
    .command('port <bridge> <port>')
    .description('attach PORT to BRIDGE (ip link set PORT master BRIDGE)')
    .option('--hairpin <on|off>')
    .action(async (br: string, port: string, o: { hairpin?: string }) => {
      if (o.hairpin !== undefined && !['on', 'off'].includes(o.hairpin)) throw invalid('--hairpin takes on or off');
      await (await import('../bridge')).addPort(await ns(), br, port, o.hairpin === undefined ? {} : { hairpin: o.hairpin === 'on' });
    });
}

// --- veth --------------------------------------------------------------------
/** veth add|del|ls */
function registerVeth(): void {
  const vethCmd = program.command('veth').description('veth pairs');
  vethCmd
    .command('add <name> <peer>')
    .description('create a veth pair, the peer directly inside --peer-netns')
    .option('--peer-netns <ns>', 'namespace for the peer (name, pid or path)')
    .option('--master <bridge>', 'attach this end to a bridge')
    .option('--address <cidr>')
    .option('--peer-address <cidr>')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .action(async (name: string, peer: string, o: { peerNetns?: string; master?: string; address?: string; peerAddress?: string; mtu?: number }) => {
      const netns = await import('../netns');
      const h = await ns();
      const peerNs = o.peerNetns ? netns.resolve(o.peerNetns) : undefined;
      try {
        const opts: VethOptions = { existOk: true };
        if (peerNs) opts.peerNetns = peerNs;
        if (o.master) opts.master = o.master;
        if (o.address) opts.address = o.address;
        if (o.peerAddress) opts.peerAddress = o.peerAddress;
        if (o.mtu !== undefined) opts.mtu = o.mtu;
        await (await import('../veth')).add(h, name, peer, opts);
      } finally {
        peerNs?.close();
      }
    });
  vethCmd
    .command('del <name>')
    .description('delete a veth pair by either end (missing: no-op)')
    .action(async (name: string) => {
      await (await import('../veth')).del(await ns(), name);
    });
  vethCmd
    .command('ls')
    .alias('list')
    .description('each veth with its peer: name, ifindex and namespace')
    .action(async () => {
      const pairs = await (await import('../veth')).list(await ns());
      const where = (n: PeerNamespace) =>
        n.same ? '(same)' : (n.name ?? (n.pid !== undefined ? `pid ${n.pid}` : n.nsid !== undefined ? `nsid ${n.nsid}` : '?'));
      print(pairs, json(), () =>
        table(
          pairs.map((p) => ({
            name: p.name,
            state: p.up ? 'up' : 'down',
            master: p.master,
            peer: p.peer.name,
            'peer-ifindex': p.peer.index,
            'peer-netns': where(p.peer.netns),
          })),
          ['name', 'state', 'master', 'peer', 'peer-ifindex', 'peer-netns'],
        ),
      );
    });
}

// --- addr --------------------------------------------------------------------
/** addr add|del|ls */
function registerAddr(): void {
  const addrCmd = program.command('addr').description('IPv4 and IPv6 addresses (ip addr)');
  addrCmd
    .command('add <cidr>')
    .description('add (or refresh) an address')
    .requiredOption('--dev <if>')
    .action(async (cidr: string, o: { dev: string }) => {
      await (await import('../addr')).replace(await ns(), cidr, o.dev, { noDad: true });
    });
  addrCmd
    .command('del <cidr>')
    .description('delete an address (missing: no-op)')
    .requiredOption('--dev <if>')
    .action(async (cidr: string, o: { dev: string }) => {
      await (await import('../addr')).del(await ns(), cidr, o.dev);
    });
  addrCmd
    .command('ls')
    .alias('list')
    .option('--dev <if>')
    .option('-4')
    .option('-6')
    .action(async (o: { dev?: string; 4?: boolean; 6?: boolean }) => {
      const filter: { dev?: string; family?: 4 | 6 } = {};
      if (o.dev) filter.dev = o.dev;
      if (o[4]) filter.family = 4;
      if (o[6]) filter.family = 6;
      const list = await (await import('../addr')).list(await ns(), filter);
      print(list, json(), () => table(list, ['dev', 'cidr', 'scope']));
    });
}

function routeSpec(dst: string, o: { via?: string; dev?: string; metric?: number }): RouteSpec {
  const r: RouteSpec = { dst };
  if (o.via) r.via = o.via;
  if (o.dev) r.dev = o.dev;
  if (o.metric !== undefined) r.metric = o.metric;
  return r;
}

// --- route -------------------------------------------------------------------
/** route add|del|ls */
function registerRoute(): void {
  const routeCmd = program.command('route').description('routes in the main table (ip route)');
  routeCmd
    .command('add <dst>')
    .description('add or replace a route; DST is a CIDR or "default"')
    .option('--via <gw>')
    .option('--dev <if>')
    .option('--metric <n>', 'metric', int('--metric'))
    .action(async (dst: string, o: { via?: string; dev?: string; metric?: number }) => {
      await (await import('../route')).replace(await ns(), routeSpec(dst, o));
    });
  routeCmd
    .command('del <dst>')
    .description('delete a route (missing: no-op)')
    .option('--via <gw>')
    .option('--dev <if>')
    .option('--metric <n>', 'metric', int('--metric'))
    .action(async (dst: string, o: { via?: string; dev?: string; metric?: number }) => {
      await (await import('../route')).del(await ns(), routeSpec(dst, o));
    });
  routeCmd
    .command('ls')
    .alias('list')
    .option('-4')
    .option('-6')
    .action(async (o: { 4?: boolean; 6?: boolean }) => {
      const list = await (await import('../route')).list(await ns(), o[4] ? { family: 4 } : o[6] ? { family: 6 } : {});
      print(list, json(), () => table(list, ['dst', 'gateway', 'dev', 'metric', 'protocol', 'scope']));
    });
}

// --- attach / detach ---------------------------------------------------------
/** attach, detach */
function registerAttach(): void {
  program
    .command('attach <ns>')
    .description('put a namespace on a bridge as Docker does: veth, eth0 inside, address, lo up, default route')
    .requiredOption('--bridge <br>')
    .requiredOption('--address <cidr>')
    .option('--gateway <ip>', 'default: the bridge address in the same subnet')
    .option('--ifname <name>', 'name inside', 'eth0')
    .option('--mtu <n>', 'MTU', int('--mtu'))
    .option('--hairpin', 'hairpin mode on the bridge port')
    .action(async (target: string, o: { bridge: string; address: string; gateway?: string; ifname: string; mtu?: number; hairpin?: boolean }) => {
      const { attach } = await import('../attach');
      const c = (await import('../netns')).resolve(target);
      try {
        const opts: Parameters<typeof attach>[2] = { bridge: o.bridge, address: o.address, ifname: o.ifname };
        if (o.gateway) opts.gateway = o.gateway;
        if (o.mtu !== undefined) opts.mtu = o.mtu;
        if (o.hairpin) opts.hairpin = true;
        const a = await attach(await ns(), c, opts);
        print(a, json(), () => `${target}: ${a.ifname} ${a.address}${a.gateway ? ` via ${a.gateway}` : ''}, host end ${a.hostIfname} on ${o.bridge}`);
      } finally {
        c.close();
      }
    });
  program
    .command('detach <ns>')
    .description('remove what attach made (missing: no-op)')
    .option('--ifname <name>', 'name inside', 'eth0')
    .action(async (target: string, o: { ifname: string }) => {
      const { detach } = await import('../attach');
      const c = (await import('../netns')).resolve(target);
      try {
        await detach(c, o.ifname);
      } finally {
        c.close();
      }
    });
}

// --- NAT, forwards, CNI, agent, inspection (their own modules) ----------------
const natCtx = {
  ns,
  netnsRef: () => program.opts<{ netns?: string }>().netns,
  json,
  stateDir,
  backend: () => program.opts<{ backend?: BackendChoice }>().backend,
};
const natEngine = async () => {
  const { NatEngine } = await import('../nat/engine');
  return new NatEngine({ ns: await ns(), stateDir: stateDir(), backend: natCtx.backend() });
};
const registerNatCommands = async () => {
  (await import('./nat')).registerNat(program, natCtx);
};
const registerInspectCommands = async () =>
  (await import('./inspect')).registerInspect(program, {
    ns,
    json,
    stateDir,
    engines: async () => {
      const { natEngines } = await import('../inspect/engines');
      return natEngines(await ns(), stateDir(), natCtx.backend());
    },
  });

// --- demo --------------------------------------------------------------------
/** demo */
function registerDemo(): void {
  program
    .command('demo')
    .description('build a bridged network in a private sandbox, send traffic through it, look at it (trace, doctor), clean up')
    .option('--svg <file>', "also write the demo's topology picture here")
    .action(async (o: { svg?: string }) => {
      const { inSandbox, runInSandbox } = await import('../sandbox');
      const svg = o.svg ? path.resolve(o.svg) : undefined;
      if (!inSandbox()) {
        process.exitCode = await runInSandbox(process.execPath, [path.join(__dirname, 'main.js'), 'demo', ...(svg ? ['--svg', svg] : [])]);
        return;
      }
      await (await import('../demo')).demo(undefined, svg ? { svg } : {});
    });
}

/** Each command word and what registers it: a run registers (and loads) only the group of its command. */
const groups: Record<string, () => void | Promise<void>> = {
  netns: registerNetns,
  link: registerLink,
  bridge: registerBridge,
  veth: registerVeth,
  addr: registerAddr,
  route: registerRoute,
  attach: registerAttach,
  detach: registerAttach,
  service: registerNatCommands,
  svc: registerNatCommands,
  nat: registerNatCommands,
  sync: registerNatCommands,
  rules: registerNatCommands,
  forward: async () => (await import('./forward')).registerForward(program, { engine: natEngine, json }),
  cni: async () => (await import('./cni')).registerCni(program, { stateDir }),
  agent: async () => (await import('./agent')).registerAgent(program, { stateDir }),
  trace: registerInspectCommands,
  doctor: registerInspectCommands,
  topology: registerInspectCommands,
  demo: registerDemo,
};

/** The command word of `argv` (after the global options and their values), or undefined. */
function commandWord(argv: readonly string[]): string | undefined {
  const withValue = new Set(['-n', '--netns', '--state-dir', '--backend']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (withValue.has(a)) i++;
    else if (!a.startsWith('-')) return a;
    else if (a === '-V' || a === '--version') return '';
  }
  return undefined;
}

/** Registers what this run needs: its command's group; everything for help, or for an unknown command (so commander can suggest one). */
async function registerFor(argv: readonly string[]): Promise<void> {
  const word = commandWord(argv);
  if (word === '') return; // --version
  const only = word === undefined ? undefined : groups[word];
  if (only) await only();
  else for (const g of new Set(Object.values(groups))) await g(); // in order: help lists commands as registered
}

async function main(): Promise<void> {
  try {
    await registerFor(process.argv.slice(2));
    await program.parseAsync(process.argv);
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      process.exitCode = e.exitCode ?? 2; // commander already printed usage or help
      return;
    }
    process.stderr.write(`tsnet: ${e.message ?? String(err)}\n`);
    process.exitCode = 1;
  } finally {
    opened?.close();
  }
}

// Exit as soon as the command is done (stdout and stderr are synchronous on Linux): a natural exit would
// first tear the heap down, ~15 ms of a one-shot command's time.
void main().then(() => process.exit());
