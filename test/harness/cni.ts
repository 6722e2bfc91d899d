/**
 * Calling the CNI plugins exactly as a runtime does: the installed
 * executables (from `tsnet cni install`), the CNI_* environment, the network
 * config on stdin, started inside the test's "node" namespace (the host the
 * runtime would run on). iproute2 and iptables-save observe the result.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as netns from '../../src/netns';
import type { ChildProcess } from 'node:child_process';
import * as link from '../../src/link';
import * as addr from '../../src/addr';
import { CLI, run, tsnet, type Topology } from './fixtures';
import { eventually, orElse } from './eventually';
import { SHIM_CONF } from '../../src/cni/defaults';

export const REFERENCE_DIR = '/usr/lib/cni';

export interface CniCall {
  status: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed (result or error), when it is JSON. */
  json: any;
  ms: number;
  /** In agent mode, for tsnet's plugins: whether the agent served the call (its log has the call), or the shim fell back to the standalone plugin. */
  servedBy?: 'agent' | 'standalone';
}

export interface CallEnv {
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  /** Extra/overriding variables (undefined removes one). */
  env?: Record<string, string | undefined>;
}

/** How the installed shims are served: by the standalone plugin (no agent listening), or by a `tsnet agent` per node namespace. */
export type CniMode = 'standalone' | 'agent';

/** A `tsnet agent` started by a test, inside a node namespace. */
export class AgentProcess {
  readonly child: ChildProcess;
  readonly ready: Promise<{ metrics?: string }>;
  log = '';
  /** Resolves once the process has exited and its stdio is closed: from then on `log` is all it wrote. */
  readonly closed: Promise<void>;
  private readonly exited: Promise<number | null>;

  /** `stateDir`: tsnet's global --state-dir (it goes before the command). */
  constructor(
    readonly node: netns.NetNs,
    readonly socket: string,
    args: string[],
    stateDir?: string,
  ) {
    this.child = node.spawn(
      process.execPath,
      [CLI, ...(stateDir ? ['--state-dir', stateDir] : []), 'agent', '--socket', socket, ...args],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.child.stderr!.on('data', (d) => (this.log += d));
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
    this.closed = new Promise((resolve) => this.child.on('close', () => resolve()));
    this.ready = new Promise((resolve, reject) => {
      let out = '';
      this.child.stdout!.on('data', (d) => {
        out += d;
        const m = /^ready \S+(?: metrics=(\S+))?$/m.exec(out);
        if (m) resolve(m[1] ? { metrics: m[1] } : {});
      });
      void this.exited.then((code) => reject(new Error(`agent exited (${code}) before it was ready: ${this.log}`)));
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** SIGTERM (graceful) or SIGKILL, and wait for the exit. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** Whether `agent` logs a line matching `re` after `from` within 15 s (its log line follows its reply to the shim). */
function agentLogged(agent: AgentProcess, from: number, re: RegExp): Promise<boolean> {
  // Generous: the log line crosses the agent's and this process's event loops, both busy under a full parallel run.
  return eventually(() => re.test(agent.log.slice(from)), {
    ms: 15_000,
    what: `the agent logging ${re}`,
  }).catch(orElse(false));
}

/** A temporary CNI install: bin dir with tsnet's plugins, CNI_PATH with the reference plugins after them. */
export class CniInstall {
  readonly dir: string;
  readonly binDir: string;
  readonly cniPath: string;
  /** The socket the shims are installed with: nothing listens there unless a test starts an agent on it. */
  readonly socket: string;
  /** Agents by node namespace name: calls in that namespace go to its agent. */
  readonly agents = new Map<string, AgentProcess>();
  /** Calls of tsnet's plugins with an agent running: how many it served, and those it did not (the shim fell back). */
  readonly served = { agent: 0, fellBack: [] as string[] };

  constructor(
    prefix: string,
    readonly mode: CniMode = 'standalone',
  ) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-${prefix}-`));
    this.binDir = path.join(this.dir, 'bin');
    this.socket = path.join(this.dir, 'run', 'agent.sock');
    const r = tsnet('cni', 'install', '--bin-dir', this.binDir, '--socket', this.socket);
    if (r.status !== 0) throw new Error(`tsnet cni install failed: ${r.stderr}`);
    // The shim takes an agent that has not greeted within 2 s for a hung one and runs standalone. Under the full
    // parallel suite a busy agent was seen to miss that (its main thread held by the work of two dozen concurrent
    // calls): a test of the agent path waits for it longer, so that only an agent that is really gone falls back.
    fs.appendFileSync(path.join(this.binDir, SHIM_CONF), 'hello_timeout_ms=10000\n');
    this.cniPath = `${this.binDir}:${REFERENCE_DIR}`;
  }

  /**
   * Starts an agent inside `node` (its own socket directory), and routes this install's calls in `node` to it.
   * `stateDir`: its --state-dir (default: one of its own).
   */
  async startAgent(node: netns.NetNs, args: string[] = [], stateDir?: string): Promise<AgentProcess> {
    const dir = fs.mkdtempSync(path.join(this.dir, 'agent-'));
    fs.chmodSync(dir, 0o700);
    const a = new AgentProcess(
      node,
      path.join(dir, 'agent.sock'),
      ['--metrics', '', '--resync-interval', '1s', ...args],
      stateDir ?? path.join(dir, 'state'),
    );
    this.agents.set(node.name!, a);
    await a.ready;
    return a;
  }

  /** In agent mode: an agent for `node`, unless it has one. */
  async serve(node: netns.NetNs): Promise<void> {
    if (this.mode === 'agent' && !this.agents.has(node.name!)) await this.startAgent(node);
  }

  /** Runs plugin `plugin` (a tsnet one from the bin dir, or a reference one) with `command` inside `node`. */
  call(node: netns.NetNs, plugin: string, command: string, conf: unknown, e: CallEnv = {}): Promise<CniCall> {
    return this.start(node, plugin, command, conf, e).done;
  }

  /** As call, with the plugin's pid (to kill it half-way). */
  start(
    node: netns.NetNs,
    plugin: string,
    command: string,
    conf: unknown,
    e: CallEnv = {},
  ): { pid: number; done: Promise<CniCall> } {
    const file = fs.existsSync(path.join(this.binDir, plugin))
      ? path.join(this.binDir, plugin)
      : path.join(REFERENCE_DIR, plugin);
    const env: Record<string, string> = {
      PATH: '/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin',
      CNI_COMMAND: command,
      CNI_PATH: this.cniPath,
    };
    const agent = this.agents.get(node.name!);
    if (agent) env.TSNET_AGENT_SOCKET = agent.socket;
    const logFrom = agent?.log.length ?? 0;
    const tsnetPlugin = fs.existsSync(path.join(this.binDir, plugin));
    if (e.containerId !== undefined) env.CNI_CONTAINERID = e.containerId;
    if (e.netns !== undefined) env.CNI_NETNS = e.netns;
    if (e.ifname !== undefined) env.CNI_IFNAME = e.ifname;
    if (e.args !== undefined) env.CNI_ARGS = e.args;
    for (const [k, v] of Object.entries(e.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    // The agent logs every call it serves: "cni: PLUGIN COMMAND NETWORK CONTAINERID IFNAME: result in N ms", from the call's environment.
    const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const logged = new RegExp(
      `cni: ${esc(plugin)} ${esc(env.CNI_COMMAND ?? '')} \\S+ ${esc(env.CNI_CONTAINERID ?? '-')} `,
    );
    const t0 = process.hrtime.bigint();
    // cwd '/': the plugin must not depend on the caller's working directory.
    const child = node.spawn(file, [], { env, cwd: '/', stdio: ['pipe', 'pipe', 'pipe'] });
    const done = new Promise<CniCall>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (err += d));
      child.on('error', reject);
      child.on('close', (status) => {
        let json: any;
        try {
          json = JSON.parse(out);
        } catch {
          json = undefined;
        }
        const call: CniCall = {
          status,
          stdout: out,
          stderr: err,
          json,
          ms: Number(process.hrtime.bigint() - t0) / 1e6,
        };
        // A killed call (status null) was served by nobody in full, a dead agent serves nothing, and a call told
        // not to use the agent (TSNET_AGENT_SOCKET overridden) is not its to serve: none is counted.
        if (
          !agent ||
          !tsnetPlugin ||
          env.TSNET_AGENT_SOCKET !== agent.socket ||
          status === null ||
          agent.child.exitCode !== null ||
          agent.child.signalCode !== null
        )
          return resolve(call);
        void agentLogged(agent, logFrom, logged).then((yes) => {
          call.servedBy = yes ? 'agent' : 'standalone';
          if (yes) this.served.agent++;
          else
            this.served.fellBack.push(
              `${plugin} ${command} ${e.containerId ?? '-'}${/not using the agent.*$/m.exec(err)?.[0].replace(/^/, ': ') ?? ''}`,
            );
          resolve(call);
        });
      });
      child.stdin!.on('error', () => {
        /* killed before reading */
      });
      child.stdin!.end(typeof conf === 'string' ? conf : JSON.stringify(conf));
    });
    return { pid: child.pid!, done };
  }

  async cleanup(): Promise<void> {
    await Promise.all([...this.agents.values()].map((a) => a.stop('SIGKILL')));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A "node" namespace NODE<n> with an uplink to an "ext" namespace beyond it
 * (`${net}.<n>.1` on the node, `.2` in ext; ext has no route back to any
 * container subnet), and a scratch directory in the install for its state.
 */
export async function nodeWithUplink(topo: Topology, cni: CniInstall, n: number, net: string) {
  const host = await topo.ns(`node${n}`);
  const ext = await topo.ns(`ext${n}`);
  await link.add(host, { kind: 'veth', name: 'uplink', up: true, peer: { name: 'eth0', netns: ext } });
  await link.setUp(ext, 'eth0');
  await addr.add(host, `${net}.${n}.1/24`, 'uplink');
  await addr.add(ext, `${net}.${n}.2/24`, 'eth0');
  const dir = fs.mkdtempSync(path.join(cni.dir, `n${n}-`));
  return { host, ext, dir, nodeIp: `${net}.${n}.1`, extIp: `${net}.${n}.2` };
}

/** What a network left in a node: veths, reservations, records, NAT rules. */
export function leftovers(node: netns.NetNs, o: { ipamDir: string; stateDir: string; network: string; match: string }) {
  const veths = run('ip', ['-n', node.name!, '-o', 'link', 'show', 'type', 'veth'])
    .stdout.trim()
    .split('\n')
    .filter(Boolean);
  const list = (d: string) => (fs.existsSync(d) ? fs.readdirSync(d) : []);
  const reservations = list(path.join(o.ipamDir, o.network)).filter(
    (f) => f !== 'lock' && !f.startsWith('last_reserved_ip.'),
  );
  const records = list(path.join(o.stateDir, 'cni', o.network));
  const rules = natRules(node).filter((l) => l.includes(o.match));
  return { veths, reservations, records, rules };
}

/**
 * Every NAT rule of the node, whichever backend wrote it: iptables-save's
 * `-A` lines (both families) and the rules of nft's `tsnet` tables, one line
 * each, as the independent observers print them.
 */
export function natRules(node: netns.NetNs): string[] {
  const inNode = (cmd: string, ...args: string[]) => run('ip', ['netns', 'exec', node.name!, cmd, ...args]).stdout;
  const ipt = [inNode('iptables-save', '-t', 'nat'), inNode('ip6tables-save', '-t', 'nat')]
    .join('\n')
    .split('\n')
    .filter((l) => l.startsWith('-A '));
  const nft = [inNode('nft', 'list', 'table', 'ip', 'tsnet'), inNode('nft', 'list', 'table', 'ip6', 'tsnet')]
    .join('\n')
    .split('\n')
    .map((l) => l.trim())
    .filter(
      (l) =>
        /(masquerade|snat|dnat|accept|drop|jump|goto)\b.*$/.test(l) && !l.startsWith('chain') && !l.startsWith('type '),
    );
  return [...ipt, ...nft];
}

/** A container's masquerade rule (`-s IP/32 ! -o BR ... -j MASQUERADE`, or nft's `ip saddr IP oifname != "BR" masquerade`). */
export function masqueradeRule(ip: string, bridge: string): RegExp {
  const e = ip.replace(/[.:]/g, (c) => `\\${c}`);
  return new RegExp(
    `(-s ${e}/(32|128) ! -o ${bridge} .*-j MASQUERADE)|(ip6? saddr ${e} oifname != "${bridge}" masquerade)`,
  );
}
