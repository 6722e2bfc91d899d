/**
 * CNI ADD, the reference bridge's steps, as named steps:
 *
 *   checkContainer -> at once: plugVeth (bridge, veth with its peer made
 *   inside the container as CNI_IFNAME) then the MAC spoof guard
 *   (macspoofchk), and IPAM then addNat (masquerade; port mappings wait for
 *   the gateway) -> ensureGateway (gateway on the bridge, forwarding) ->
 *   configureContainer (addresses + routes inside, then the wait for the
 *   port to forward, then a gratuitous ARP / unsolicited NA for each
 *   address) -> the result, recorded once the NAT rules are in too.
 *
 * The NAT rules need nothing but the addresses, and a veth can wait in the
 * kernel: every device registered in a namespace waits for its nf_tables
 * commit mutex (kernels since 6.16), which a flush or a big sync of the
 * host's ruleset holds for tens of ms. The rules go in meanwhile.
 *
 * The attachment record is written before the first step and names what the
 * steps make (the host veth, the IPAM reservation, the NAT rules before they
 * exist), so a failing step is undone by one teardown of the record, as a
 * DEL or a GC after a crash would.
 */
import * as link from '../../link';
import * as netns from '../../netns';
import { findPlugin } from '../delegate';
import { CniError, CNI_ERR } from '../errors';
import { parseIpamConfig } from '../ipam/config';
import { RecordStore, type AttachmentRecord } from '../records';
import type { CniEnv, NetConf, Result, RouteResult } from '../types';
import { newRecord, openContainer } from './attachment';
import { BUILTIN_IPAM, parseBridgeConf, type BridgeConf } from './config';
import { announceAddresses, checkContainer, configureContainer, containerRoutes } from './container';
import { ensureGateway, gatewayCidrs, guardPort, plugVeth, waitForwarding } from './host';
import { ipam } from './ipam-step';
import { addNat } from './nat';
import { teardown } from './teardown';

/** What the steps of one ADD share. */
interface Add {
  c: BridgeConf;
  conf: NetConf;
  env: CniEnv;
  host: netns.NetNs;
  /** The container's namespace. */
  ns: netns.NetNs;
  rec: AttachmentRecord;
  records: RecordStore;
}

/** CNI ADD. */
export async function bridgeAdd(conf: NetConf, env: CniEnv): Promise<Result> {
  const c = parseBridgeConf(conf, env);
  const cid = env.containerId!;
  const ifname = env.ifname!;
  const host = netns.current();
  const ns = openContainer(env.netns!);
  const records = new RecordStore(c.stateDir, c.name);
  try {
    const prior = records.get(cid, ifname);
    if (prior?.complete && prior.result && prior.netns === env.netns && (await link.get(ns, ifname)))
      return prior.result; // the same ADD again
    if (prior) await teardown(prior, env, records); // a leftover of an ADD that died half-way
    // Config errors surface before anything is made.
    if (c.ipamType === BUILTIN_IPAM) parseIpamConfig(conf);
    else findPlugin(c.ipamType, env.path);
    const rec = newRecord(c, conf, env);
    records.put(rec, { durable: false }); // before the first change: whatever happens next, DEL and GC can find it (a new file: nothing durable is replaced)
    try {
      return await addSteps({ c, conf, env, host, ns, rec, records });
    } catch (err) {
      await teardown(rec, env, records).catch(() => {
        /* the original error is the one to report; GC retries the rest */
      });
      throw err;
    }
  } finally {
    ns.close();
  }
}

/** The steps, in order; the first to fail ends the ADD (bridgeAdd tears down what the record names). */
async function addSteps(a: Add): Promise<Result> {
  const { c, conf, env, host, ns, rec } = a;
  const ifname = env.ifname!;
  const rc = conf.runtimeConfig ?? {};
  await checkContainer(ns, ifname, env.netns!, rc);
  const mtu = rc.mtu ?? c.mtu;
  const hostPort = async () => {
    const br = await plugVeth(host, c, rec.hostIfname, { name: ifname, netns: ns, mtu, mac: rc.mac });
    if (c.macspoofchk) await guardPort(host, ns, ifname, rec.hostIfname); // before the container can send a frame
    return br;
  };
  const addresses = ipam(conf, env)
    .add()
    .then((ip) => {
      if (!ip.ips?.length)
        throw new CniError(CNI_ERR.internal, `IPAM plugin ${c.ipamType} returned no IP configuration`);
      return ip;
    });
  // A port mapping's route_localnet goes on the interface the host routes the container by: after the gateway.
  const nat = (ip: Result) => addNat(c, rec, a.records, host, env, ip.ips!, rc.portMappings);
  const natEarly = rc.portMappings?.length ? undefined : addresses.then(nat);
  // Every step started has ended before the caller tears down what the record names (and is handled at once).
  const settled = natEarly?.catch(() => undefined);
  const [port, addressed] = await Promise.allSettled([hostPort(), addresses]);
  if (port.status === 'rejected' || addressed.status === 'rejected') {
    await settled;
    throw port.status === 'rejected' ? port.reason : (addressed as PromiseRejectedResult).reason;
  }
  const [br, ip] = [port.value, addressed.value];
  const routes = containerRoutes(c, ip);
  try {
    if (c.isGateway) await ensureGateway(host, c, br.index, gatewayCidrs(ip.ips!));
  } catch (err) {
    await settled;
    throw err;
  }

  // The container side, and the NAT rules on the host if they have not gone in yet.
  const containerSide = async () => {
    await configureContainer(ns, ifname, ip.ips!, routes, c);
    const port = await waitForwarding(host, rec.hostIfname);
    // The address may have been another container's a moment ago: the host must not keep its MAC.
    await announceAddresses(ns, ifname, ip.ips!, c);
    return port;
  };
  const [rules, container] = await Promise.allSettled([natEarly ?? nat(ip), containerSide()]);
  // The caller tears down both halves.
  if (rules.status === 'rejected') throw rules.reason;
  if (container.status === 'rejected') throw container.reason;

  return recordResult(a, ip, routes, container.value);
}

/** The result (bridge, host end as waitForwarding saw it, container end with their MACs; IPAM's addresses on the container end), recorded as complete. */
async function recordResult(a: Add, ip: Result, routes: RouteResult[], hostEnd: link.Link): Promise<Result> {
  const { c, conf, env, host, ns, rec } = a;
  const ifname = env.ifname!;
  const inside = await link.mustGet(ns, ifname);
  const brNow = await link.mustGet(host, c.bridge);
  const result: Result = {
    cniVersion: conf.cniVersion,
    interfaces: [
      { name: c.bridge, ...(brNow.mac ? { mac: brNow.mac } : {}) },
      { name: rec.hostIfname, ...(hostEnd.mac ? { mac: hostEnd.mac } : {}) },
      { name: ifname, ...(inside.mac ? { mac: inside.mac } : {}), sandbox: env.netns! },
    ],
    ips: ip.ips!.map((x) => ({ ...x, interface: 2 })),
    routes,
    dns: conf.dns && Object.keys(conf.dns).length ? conf.dns : (ip.dns ?? {}),
  };
  rec.result = result;
  rec.complete = true;
  a.records.put(rec); // replaces the durable version naming the NAT rules, so it is durable too
  return result;
}
