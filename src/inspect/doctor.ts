/**
 * `tsnet doctor`: the mistakes that break container networking without an
 * error anywhere, each found from the kernel's live state and tsnet's
 * desired state, reported with what to run. One Problem per finding;
 * nothing is changed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { contains, parseCidr } from '../addr/cidr';
import { hasCode } from '../errors';
import { NFPROTO, NFTA_CHAIN, NFT_MSG, NF_INET_HOOK, nftMsg } from '../netlink/nftables';
import { decodeAttrs, type AttrObject } from '../netlink/attrs';
import type { NetNs } from '../netns';
import { neededSysctls, type NatEngine } from '../nat/engine';
import { NFT_TABLE } from '../nat/constants';
import { familyOf } from '../nat/model';
import { stateDir as defaultStateDir } from '../state';
import * as sysctl from '../sysctl';
import { inspectNode, ownerOf, type InterfaceView, type NodeView } from './node';

export interface Problem {
  /** Which check found it (stable names: ip-forward, br-netfilter, rp-filter, bridge-port, hairpin, masquerade, route-localnet, conntrack, mtu, cni-state, nat-canary, forward-drop). */
  check: string;
  /** The object concerned: an interface, a service, a state directory. */
  where: string;
  problem: string;
  fix: string;
}

/** doctor's report as text: one line per problem with its fix, or that there is none. */
export const formatProblems = (problems: readonly Problem[]): string =>
  problems.length
    ? problems.map((p) => `${p.check}: ${p.where}: ${p.problem}. Fix: ${p.fix}`).join('\n')
    : 'no problems found';

export interface DoctorOptions {
  /** NAT engines of the node (one per state directory). */
  engines?: readonly NatEngine[];
  /** State directories whose CNI attachment records to check (default: the default state directory). */
  stateDirs?: readonly string[];
  /** The conntrack limit to compare the table with (default: net.netfilter.nf_conntrack_max). */
  conntrackMax?: number;
}

const read = (h: NetNs, key: string): string | undefined => {
  try {
    return sysctl.get(h, key);
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return undefined;
    throw err;
  }
};

/** Everything wrong that tsnet can see in the namespace `host` (the node). */
export async function doctor(host: NetNs, o: DoctorOptions = {}): Promise<Problem[]> {
  const engines = o.engines ?? [];
  const view = await inspectNode(host, engines);
  const out: Problem[] = [];
  const add = (check: string, where: string, problem: string, fix: string) => out.push({ check, where, problem, fix });
  const node = view.namespaces.find((n) => n.node)!;
  const iface = (name: string) => node.interfaces.find((i) => i.name === name);
  const st = view.nat;
  const on = host.name ? ` -n ${host.name}` : '';

  // Bridges that route containers: an address (the gateway) and ports.
  const gatewayBridges = view.bridges.filter((b) => b.addresses.length && b.ports.length);

  // ip-forward: forwards and routed containers need it.
  for (const [fam, key] of [
    [4, 'net.ipv4.ip_forward'],
    [6, 'net.ipv6.conf.all.forwarding'],
  ] as const) {
    const why = [
      ...st.forwards.filter((f) => familyOf(f.targetIp) === fam).map((f) => `forward ${f.name}`),
      ...gatewayBridges
        .filter((b) => b.addresses.some((a) => familyOf(a.split('/')[0]!) === fam))
        .map((b) => `bridge ${b.name} (gateway for its containers)`),
    ];
    if (why.length && read(host, key) !== '1') {
      add(
        'ip-forward',
        host.label,
        `${key} is off but ${why.join(', ')} needs forwarding: packets between interfaces are dropped`,
        `tsnet sync (forwards set it), or sysctl -w ${key}=1 in ${host.label}`,
      );
    }
  }

  // br-netfilter: a service whose endpoint sits on a bridge, reached by its neighbours through the VIP.
  const bridgedEndpoints = st.services.flatMap((s) =>
    s.endpoints.flatMap((e) => {
      const br = bridgeOf(view, e.ip);
      return br ? [{ s, e, br }] : [];
    }),
  );
  if (bridgedEndpoints.length && read(host, 'net.bridge.bridge-nf-call-iptables') !== '1') {
    const bridges = [...new Set(bridgedEndpoints.map((x) => x.br))];
    add(
      'br-netfilter',
      bridges.map((b) => `bridge ${b}`).join(', '),
      `services ${[...new Set(bridgedEndpoints.map((x) => x.s.name))].join(', ')} have endpoints on ${bridges.join(', ')}, but bridged packets skip netfilter (net.bridge.bridge-nf-call-iptables is not 1): a container reaching a service whose endpoint is on its own bridge gets the reply straight from the endpoint, un-NATed, and the connection fails`,
      `modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1 in ${host.label}`,
    );
  }

  // rp-filter: forwards that leave the return path to the target's own routing.
  const asymmetric = st.forwards.filter((f) => f.snat === 'none');
  if (asymmetric.length) {
    const all = Number(read(host, 'net.ipv4.conf.all.rp_filter') ?? 0);
    const strict = node.interfaces.filter(
      (i) => i.name !== 'lo' && Math.max(all, Number(read(host, `net.ipv4.conf.${i.name}.rp_filter`) ?? 0)) === 1,
    );
    if (strict.length) {
      add(
        'rp-filter',
        strict.map((i) => i.name).join(', '),
        `forward ${asymmetric.map((f) => f.name).join(', ')} uses --snat none (replies come back by the target's own route), but strict reverse-path filtering (rp_filter=1) on ${strict.map((i) => i.name).join(', ')} drops packets that arrive on another interface than the route back`,
        `sysctl -w net.ipv4.conf.all.rp_filter=2 (loose) and net.ipv4.conf.IF.rp_filter=2 in ${host.label}`,
      );
    }
  }

  // bridge-port: a port that does not forward cuts its container off.
  for (const b of view.bridges) {
    for (const p of b.ports) {
      if (p.state && p.state !== 'forwarding') {
        add(
          'bridge-port',
          `${b.name} port ${p.name}`,
          `port ${p.name} of bridge ${b.name} is ${p.state}: its container is cut off`,
          p.state === 'disabled'
            ? `tsnet${on} link set ${p.name} --up`
            : `check STP on ${b.name} (tsnet bridge add ${b.name} without --stp turns it off)`,
        );
      }
    }
  }

  // hairpin: an endpoint reaching its own service goes back out of the port it came in by.
  for (const { s, e, br } of bridgedEndpoints) {
    const owner = ownerOf(view, e.ip)!;
    const hostEnd = owner.iface.peer?.ns === node.id ? iface(owner.iface.peer.name ?? '') : undefined;
    if (hostEnd?.port && !hostEnd.port.hairpin) {
      add(
        'hairpin',
        `${br} port ${hostEnd.name}`,
        `endpoint ${e.ip}:${e.port} of service ${s.name} cannot reach its own service through the VIP: hairpin is off on its bridge port ${hostEnd.name}`,
        `tsnet${on} bridge port ${br} ${hostEnd.name} --hairpin on`,
      );
    }
  }

  // masquerade: containers behind a gateway bridge with no source NAT out of the node.
  const snatSources = st.rules
    .filter((r) => r.kind !== 'dnat')
    .map((r) => parseCidr(r.source, { defaultPrefix: true }));
  for (const b of gatewayBridges) {
    for (const a of b.addresses.filter((x) => familyOf(x.split('/')[0]!) === 4)) {
      const subnet = parseCidr(a);
      const containers = view.namespaces
        .filter((n) => !n.node)
        .flatMap((n) => n.interfaces.flatMap((i) => i.addresses.map((c) => c.split('/')[0]!)))
        .filter((ip) => contains(subnet, ip));
      const bare = containers.filter((ip) => !snatSources.some((src) => contains(src, ip)));
      if (bare.length) {
        add(
          'masquerade',
          `bridge ${b.name}`,
          `containers on ${b.name} (${subnet.network}/${subnet.prefix}: ${bare.join(', ')}) have no masquerade rule: their packets leave the node with addresses nobody routes back`,
          `tsnet${on} nat masquerade add --source ${subnet.network}/${subnet.prefix} --out-not ${b.name}`,
        );
      }
    }
  }

  // route-localnet (and the rest of what forwards need), against the live values.
  for (const [key, value] of await neededSysctls(host, st)) {
    if (!key.includes('route_localnet')) continue; // ip_forward: reported above
    const now = read(host, key);
    if (now !== value)
      add(
        'route-localnet',
        key.split('/')[3] ?? key,
        `${key.replace(/\//g, '.')} is ${now ?? 'missing'}: 127.0.0.1 clients of a forward are dropped on the way out`,
        `tsnet sync (it sets it), or sysctl -w ${key.replace(/\//g, '.')}=${value}`,
      );
  }

  // conntrack: a full table drops new connections.
  const count = Number(read(host, 'net.netfilter.nf_conntrack_count') ?? 0);
  const max = o.conntrackMax ?? Number(read(host, 'net.netfilter.nf_conntrack_max') ?? 0);
  if (max > 0 && count >= 0.9 * max) {
    add(
      'conntrack',
      host.label,
      `the conntrack table holds ${count} of at most ${max} entries (${Math.round((100 * count) / max)}%): at the limit new connections are dropped`,
      'raise net.netfilter.nf_conntrack_max (on the host), or find what opens so many connections (conntrack -L)',
    );
  }

  // mtu: a veth whose MTU differs from its bridge's.
  for (const b of view.bridges) {
    const br = iface(b.name);
    for (const p of b.ports) {
      const port = iface(p.name);
      if (br && port && port.kind === 'veth' && port.mtu !== br.mtu) {
        add(
          'mtu',
          `${b.name} port ${p.name}`,
          `veth ${p.name} has MTU ${port.mtu}, its bridge ${b.name} ${br.mtu}: large packets are dropped or fragmented on the way`,
          `tsnet${on} link set ${p.name} --mtu ${br.mtu} (and the container's end)`,
        );
      }
    }
    for (const n of view.namespaces.filter((x) => !x.node)) {
      for (const i of n.interfaces) {
        const hostEnd: InterfaceView | undefined = i.peer?.ns === node.id ? iface(i.peer.name ?? '') : undefined;
        if (hostEnd?.master === b.name && br && i.mtu !== br.mtu) {
          add(
            'mtu',
            `${n.id} ${i.name}`,
            `${i.name} in ${n.id} has MTU ${i.mtu}, the bridge ${b.name} ${br.mtu}`,
            `tsnet -n ${n.id} link set ${i.name} --mtu ${br.mtu}`,
          );
        }
      }
    }
  }

  // cni-state: attachments without a namespace, reservations without an attachment.
  for (const dir of o.stateDirs ?? [defaultStateDir()]) out.push(...cniState(dir));

  // nat-canary: rules tsnet applied that someone flushed.
  for (const e of engines) {
    const families = e.appliedFamilies();
    if (!families.length) continue;
    const backend = await e.backend();
    for (const f of families) {
      if (!(await backend.canaryPresent(f))) {
        const m = /^(.*)\/netns\/([^/]+)$/.exec(e.dir);
        const cmd = m ? `tsnet -n ${m[2]} --state-dir ${m[1]} sync` : `tsnet --state-dir ${e.dir} sync`;
        add(
          'nat-canary',
          e.dir,
          `tsnet's IPv${f} NAT rules (${backend.name}) are gone: someone flushed them (iptables -t nat -F, nft flush ruleset); services and forwards do not work`,
          `${cmd} (the agent does it within its resync interval)`,
        );
      }
    }
  }

  // forward-drop: another nftables table's forward hook with policy drop (an accept in tsnet's table cannot override it).
  const forwarding = st.forwards.length || gatewayBridges.length;
  if (forwarding) {
    for (const c of await dropForwardChains(host)) {
      add(
        'forward-drop',
        `table ${c.family} ${c.table} chain ${c.chain}`,
        `chain ${c.chain} of table ${c.family} ${c.table} (hook forward, policy drop) drops forwarded flows: tsnet's accept in its own table cannot override a drop in another (nftables semantics)`,
        `add "ct status dnat accept" (and your containers' traffic) to ${c.table} ${c.chain}, or use --backend iptables with iptables-nft`,
      );
    }
  }
  return out;
}

/** The bridge (in the node) that an address's namespace is attached to, if any. */
function bridgeOf(view: NodeView, ip: string): string | undefined {
  const owner = ownerOf(view, ip);
  if (!owner || owner.ns.node) return undefined;
  const node = view.namespaces.find((n) => n.node)!;
  const hostEnd =
    owner.iface.peer?.ns === node.id ? node.interfaces.find((i) => i.name === owner.iface.peer!.name) : undefined;
  return hostEnd?.master;
}

function cniState(stateDir: string): Problem[] {
  const out: Problem[] = [];
  const root = path.join(stateDir, 'cni');
  let networks: string[];
  try {
    networks = fs.readdirSync(root);
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return out;
    throw err;
  }
  for (const network of networks) {
    const dir = path.join(root, network);
    const records = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => {
        try {
          return JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as {
            containerId: string;
            ifname: string;
            netns?: string;
            conf?: { ipam?: { type?: string; dataDir?: string } };
          };
        } catch {
          return undefined;
        }
      })
      .filter((r): r is NonNullable<typeof r> => !!r);
    for (const r of records) {
      if (r.netns && !fs.existsSync(r.netns)) {
        out.push({
          check: 'cni-state',
          where: `${network} ${r.containerId}:${r.ifname}`,
          problem: `attachment ${r.containerId}:${r.ifname} of network ${network} has no namespace any more (${r.netns} is gone): its address and rules are still held`,
          fix: 'CNI DEL for it (the runtime), or CNI GC with the live attachments',
        });
      }
    }
    const dataDirs = new Set(
      records
        .filter((r) => !r.conf?.ipam?.type || ['tsnet-ipam', 'host-local'].includes(r.conf.ipam.type))
        .map((r) => r.conf?.ipam?.dataDir ?? '/var/lib/cni/networks'),
    );
    const live = new Set(records.map((r) => `${r.containerId}\n${r.ifname}`));
    for (const data of dataDirs) {
      const rdir = path.join(data, network);
      let files: string[] = [];
      try {
        files = fs.readdirSync(rdir);
      } catch {
        continue;
      }
      for (const f of files.filter((x) => x !== 'lock' && !x.startsWith('last_reserved_ip.'))) {
        const [cid, ifname] = fs.readFileSync(path.join(rdir, f), 'utf8').split(/\r?\n/);
        if (cid && !live.has(`${cid}\n${ifname ?? ''}`)) {
          out.push({
            check: 'cni-state',
            where: `${network} ${f}`,
            problem: `address ${f} of network ${network} is reserved for ${cid}${ifname ? `:${ifname}` : ''}, which has no attachment: the address is lost until released`,
            fix: `CNI GC of network ${network} with its live attachments, or remove ${path.join(rdir, f)}`,
          });
        }
      }
    }
  }
  return out;
}

/** Base chains on the forward hook with policy drop, in tables other than tsnet's (nf_tables over netlink: iptables-nft's too). */
async function dropForwardChains(h: NetNs): Promise<{ family: string; table: string; chain: string }[]> {
  const out: { family: string; table: string; chain: string }[] = [];
  const NF_DROP = 0;
  const fams: Record<number, string> = { [NFPROTO.IPV4]: 'ip', [NFPROTO.IPV6]: 'ip6', [NFPROTO.INET]: 'inet' };
  const msgs = await h.netfilter.dump(nftMsg(NFT_MSG.GETCHAIN), Buffer.from([NFPROTO.UNSPEC, 0, 0, 0]));
  for (const m of msgs) {
    if (m.type !== nftMsg(NFT_MSG.NEWCHAIN)) continue;
    const fam = m.payload[0]!;
    const c = decodeAttrs(NFTA_CHAIN, m.payload.subarray(4));
    const hook = c.hook as AttrObject | undefined;
    if (c.table === NFT_TABLE || !hook || hook.hooknum !== NF_INET_HOOK.forward || c.policy !== NF_DROP) continue;
    out.push({ family: fams[fam] ?? String(fam), table: String(c.table), chain: String(c.name) });
  }
  return out;
}
