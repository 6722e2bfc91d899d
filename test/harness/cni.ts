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
import { run, tsnet } from './fixtures';

export const REFERENCE_DIR = '/usr/lib/cni';

export interface CniCall {
  status: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed (result or error), when it is JSON. */
  json: any;
  ms: number;
}

export interface CallEnv {
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  /** Extra/overriding variables (undefined removes one). */
  env?: Record<string, string | undefined>;
}

/** A temporary CNI install: bin dir with tsnet's plugins, CNI_PATH with the reference plugins after them. */
export class CniInstall {
  readonly dir: string;
  readonly binDir: string;
  readonly cniPath: string;

  constructor(prefix: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsnet-${prefix}-`));
    this.binDir = path.join(this.dir, 'bin');
    const r = tsnet('cni', 'install', '--bin-dir', this.binDir);
    if (r.status !== 0) throw new Error(`tsnet cni install failed: ${r.stderr}`);
    this.cniPath = `${this.binDir}:${REFERENCE_DIR}`;
  }

  /** Runs plugin `plugin` (a tsnet one from the bin dir, or a reference one) with `command` inside `node`. */
  call(node: netns.NetNs, plugin: string, command: string, conf: unknown, e: CallEnv = {}): Promise<CniCall> {
    return this.start(node, plugin, command, conf, e).done;
  }

  /** As call, with the plugin's pid (to kill it half-way). */
  start(node: netns.NetNs, plugin: string, command: string, conf: unknown, e: CallEnv = {}): { pid: number; done: Promise<CniCall> } {
    const file = fs.existsSync(path.join(this.binDir, plugin)) ? path.join(this.binDir, plugin) : path.join(REFERENCE_DIR, plugin);
    const env: Record<string, string> = { PATH: '/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin', CNI_COMMAND: command, CNI_PATH: this.cniPath };
    if (e.containerId !== undefined) env.CNI_CONTAINERID = e.containerId;
    if (e.netns !== undefined) env.CNI_NETNS = e.netns;
    if (e.ifname !== undefined) env.CNI_IFNAME = e.ifname;
    if (e.args !== undefined) env.CNI_ARGS = e.args;
    for (const [k, v] of Object.entries(e.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
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
        resolve({ status, stdout: out, stderr: err, json, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
      });
      child.stdin!.on('error', () => { /* killed before reading */ });
      child.stdin!.end(typeof conf === 'string' ? conf : JSON.stringify(conf));
    });
    return { pid: child.pid!, done };
  }

  cleanup(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** What a network left in a node: veths, reservations, records, NAT rules. */
export function leftovers(node: netns.NetNs, o: { ipamDir: string; stateDir: string; network: string; match: string }) {
  const veths = run('ip', ['-n', node.name!, '-o', 'link', 'show', 'type', 'veth']).stdout.trim().split('\n').filter(Boolean);
  const list = (d: string) => (fs.existsSync(d) ? fs.readdirSync(d) : []);
  const reservations = list(path.join(o.ipamDir, o.network)).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip.'));
  const records = list(path.join(o.stateDir, 'cni', o.network));
  const rules = run('ip', ['netns', 'exec', node.name!, 'iptables-save', '-t', 'nat']).stdout.split('\n').filter((l) => l.includes(o.match));
  return { veths, reservations, records, rules };
}
