/**
 * Bridges: `ip link add BR type bridge stp_state 0`, `ip link set PORT master BR`,
 * `bridge link set dev PORT hairpin on`, done idempotently.
 */
import { createHash } from 'node:crypto';
import * as link from '../link';
import * as addr from '../addr';
import { TsnetError, hasCode, isExists } from '../errors';
import type { NetNs } from '../netns';
import type { Link } from '../link';
import { labelOf } from '../netns/internal';

export interface BridgeOptions {
  /** Spanning tree; off by default, as container bridges have it (no 30 s listening delay). */
  stp?: boolean;
  vlanFiltering?: boolean;
  mtu?: number;
  /** Fixed MAC. Default: derived from the bridge name (see stableMac). */
  mac?: string;
  /** Addresses to put on the bridge (the containers' gateway), CIDR. */
  addresses?: string[];
}

/**
 * A locally administered unicast MAC derived from the bridge name. Without a
 * fixed MAC a bridge takes the lowest MAC of its ports, so it changes every
 * time a container joins or leaves and neighbours' ARP caches go stale
 * (netavark and Docker pin it for the same reason).
 */
export function stableMac(name: string): string {
  const h = createHash('sha256').update(`tsnet-bridge:${name}`).digest();
  h[0] = (h[0]! & 0xfc) | 0x02;
  return [...h.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

function mustBeBridge(h: NetNs, name: string, l: Link): void {
  if (l.kind !== 'bridge') {
    throw new TsnetError(
      `${name} in ${labelOf(h)} is a ${l.kind ?? 'device'} link, not a bridge: pick another bridge name or delete it`,
      { code: 'EEXIST' },
    );
  }
}

/**
 * Makes sure bridge `name` exists, is up and has `addresses`:
 * `ip link add NAME type bridge` + `ip addr replace ...` + `ip link set NAME up`.
 * An existing bridge is reused (its options brought to what was asked); a
 * link of that name that is not a bridge is an error, and nothing is changed.
 * A bridge this call created is removed again if a later step fails.
 */
export async function ensure(h: NetNs, name: string, o: BridgeOptions = {}): Promise<Link> {
  link.validateIfname(name);
  for (const a of o.addresses ?? []) addr.parseCidr(a);
  let existing = await link.get(h, name);
  let created = false;
  if (!existing) {
    try {
      await link.add(h, {
        kind: 'bridge',
        name,
        stp: o.stp ?? false,
        vlanFiltering: o.vlanFiltering,
        mtu: o.mtu,
        mac: o.mac ?? stableMac(name),
      });
      created = true;
    } catch (err) {
      if (o.vlanFiltering && hasCode(err, 'EOPNOTSUPP')) {
        throw new TsnetError(
          `${(err as Error).message}: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING); create the bridge without it`,
          { code: 'EOPNOTSUPP' },
        );
      }
      if (!isExists(err)) throw err; // lost a race: someone else made it; verify below
    }
    existing = await link.mustGet(h, name);
  }
  mustBeBridge(h, name, existing);
  try {
    const want: link.LinkChange = { up: true };
    if (!created) {
      if (o.stp !== undefined && existing.bridge?.stp !== o.stp) (want.bridge ??= {}).stp = o.stp;
      if (o.vlanFiltering !== undefined && existing.bridge?.vlanFiltering !== o.vlanFiltering)
        (want.bridge ??= {}).vlanFiltering = o.vlanFiltering;
      if (o.mtu !== undefined && existing.mtu !== o.mtu) want.mtu = o.mtu;
    }
    for (const a of o.addresses ?? []) await addr.replace(h, a, existing.index, { noDad: true });
    if (!existing.up || want.bridge || want.mtu !== undefined) await link.set(h, existing.index, want);
  } catch (err) {
    if (created) await link.del(h, existing.index);
    throw err;
  }
  return link.mustGet(h, existing.index);
}

/**
 * Waits until the bridge port `port` forwards (a port whose carrier just came
 * up is disabled until the kernel's linkwatch gets to it, and frames sent
 * before are lost); returns the port. ETIMEDOUT after `timeoutMs`.
 */
export async function waitForwarding(h: NetNs, port: string, timeoutMs = 5000): Promise<Link> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const l = await link.get(h, port);
    if (l?.port?.state === 'forwarding') return l;
    if (Date.now() > deadline)
      throw new TsnetError(
        `bridge port ${port} in ${labelOf(h)} did not reach the forwarding state within ${timeoutMs} ms (state ${l?.port?.state ?? 'unknown'})`,
        { code: 'ETIMEDOUT' },
      );
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Deletes a bridge (its ports are released, not deleted). Idempotent; refuses a link that is not a bridge. */
export async function del(h: NetNs, name: string): Promise<boolean> {
  const l = await link.get(h, name);
  if (!l) return false;
  mustBeBridge(h, name, l);
  return link.del(h, l.index);
}

/** `ip link set PORT master BRIDGE` (+ hairpin when asked). */
export async function addPort(h: NetNs, bridge: string, port: string, o: { hairpin?: boolean } = {}): Promise<void> {
  const br = await link.mustGet(h, bridge);
  mustBeBridge(h, bridge, br);
  await link.set(h, port, { master: br.index });
  if (o.hairpin !== undefined) await link.setBridgePort(h, port, { hairpin: o.hairpin });
}

/** `ip link set PORT nomaster`. */
export async function removePort(h: NetNs, port: string): Promise<void> {
  await link.set(h, port, { master: null });
}

/** `bridge link set dev PORT hairpin on|off`: let traffic leave by the port it came in (a container reaching itself via a NAT'd address). */
export async function setHairpin(h: NetNs, port: string, on: boolean): Promise<void> {
  await link.setBridgePort(h, port, { hairpin: on });
}

export interface BridgeSummary {
  name: string;
  index: number;
  up: boolean;
  mac?: string;
  mtu: number;
  stp: boolean;
  vlanFiltering: boolean;
  /** Global and host-scope addresses (the gateway); link-local ones are left out. */
  addresses: string[];
  ports: { name: string; index: number; hairpin: boolean; state?: string }[];
}

/** Bridges with their ports and addresses: `ip -d link show type bridge` + `bridge link`. */
export async function list(h: NetNs): Promise<BridgeSummary[]> {
  const [links, addrs] = await Promise.all([link.list(h), addr.list(h)]);
  return links
    .filter((l) => l.kind === 'bridge')
    .map((b) => {
      const s: BridgeSummary = {
        name: b.name,
        index: b.index,
        up: b.up,
        mtu: b.mtu,
        stp: b.bridge?.stp ?? false,
        vlanFiltering: b.bridge?.vlanFiltering ?? false,
        addresses: addrs.filter((a) => a.index === b.index && a.scope !== 'link').map((a) => a.cidr),
        ports: links
          .filter((p) => p.master === b.index)
          .map((p) => {
            const port: BridgeSummary['ports'][number] = {
              name: p.name,
              index: p.index,
              hairpin: p.port?.hairpin ?? false,
            };
            if (p.port?.state) port.state = p.port.state;
            return port;
          }),
      };
      if (b.mac) s.mac = b.mac;
      return s;
    });
}
