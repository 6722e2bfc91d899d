/**
 * The names of the table's objects: its maps (declared by staticSets) and
 * fixed chains, the keys the maps are looked up by, and the chains and sets named after a service (its
 * own chain, an endpoint's chain, an affinity set) or shared by services
 * alike (lb chains).
 */
import { formatHostPort } from '../../addr/cidr';
import type { Service } from '../model';
import { endpointHash, portProtoHash } from '../names';
import type { KeyExpr, NamedSet } from './ruleset';

export const SERVICE_IPS = 'service-ips';
export const NO_ENDPOINTS = 'no-endpoint-services';
export const ENDPOINTS = 'endpoints';
export const ENDPOINTS_WEIGHTED = 'endpoints-weighted';
export const HAIRPIN = 'hairpin';
export const CANARY = 'canary';
export const MARK_MASQ = 'mark-for-masquerade';
export const REJECT_CHAIN = 'reject-no-endpoints';

export const SERVICE_KEY: KeyExpr = { fields: ['daddr', 'l4proto', 'dport'] };
/** The numgen field of the endpoint maps' key: its modulus is each lb chain's own (the map's typeof only names the field). */
export const ENDPOINT_KEY: KeyExpr = { fields: ['daddr', 'l4proto', 'dport', 'numgen'], mod: 65536 };
const ENDPOINT_VALUE: KeyExpr = { fields: ['daddr', 'dport'] };

const safe = (s: string) => s.replace(/:/g, '.');

export const svcChain = (s: Pick<Service, 'name' | 'proto'>): string =>
  `svc-${portProtoHash(s.name, s.proto).slice(0, 8)}-${s.name}/${s.proto}`;
export const sepChain = (s: Pick<Service, 'name' | 'proto'>, ip: string, port: number): string =>
  `sep-${endpointHash(s.name, s.proto, formatHostPort(ip, port)).slice(0, 8)}-${s.name}/${s.proto}__${safe(ip)}/${port}`;
export const affinitySet = (sep: string, seconds: number) => `aff-${sep.slice(4, 12)}-${seconds}`;

export const weighted = (s: Service) => s.endpoints.some((e) => e.weight !== 1);
export const totalWeight = (s: Service) => s.endpoints.reduce((n, e) => n + e.weight, 0);
/** The shared chain that picks among a service's endpoints: by count (equal weights) or by total weight. */
export const lbChain = (s: Service): string =>
  weighted(s) ? `lbw-${s.proto}-${totalWeight(s)}` : `lb-${s.proto}-${s.endpoints.length}`;
/** Whether a service needs a chain of its own (features the shared chains cannot express). */
export const ownChain = (s: Service): boolean => s.affinitySeconds !== undefined || s.masqueradeNotFrom !== undefined;

const serviceSet = (name: string): NamedSet => ({ name, key: SERVICE_KEY, data: 'verdict', counter: true });
const endpointSet = (name: string, interval: boolean): NamedSet => ({
  name,
  key: ENDPOINT_KEY,
  data: ENDPOINT_VALUE,
  counter: true,
  ...(interval ? { interval } : {}),
});

/** The sets every table has (the maps services are elements of). */
export function staticSets(): NamedSet[] {
  return [
    serviceSet(SERVICE_IPS),
    serviceSet(NO_ENDPOINTS),
    endpointSet(ENDPOINTS, false),
    endpointSet(ENDPOINTS_WEIGHTED, true),
    { name: HAIRPIN, key: { fields: ['saddr', 'daddr'] } },
  ];
}
