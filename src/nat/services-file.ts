/**
 * A services file (`tsnet service apply --file`): a JSON array of services,
 * in every shape tsnet has accepted or printed, each entry in either:
 *
 *   as `tsnet -j service ls` prints it   {"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp",
 *                                          "endpoints":[{"ip":"10.0.0.2","port":8080,"weight":1}],
 *                                          "affinitySeconds":30,"masqueradeNotFrom":"10.0.0.0/8","counters":{...}}
 *   as the CLI's flags write it          {"name":"web","vip":"10.96.0.10:80","endpoints":["10.0.0.2:8080@3"],
 *                                          "affinity":30,"masqueradeNotFrom":"10.0.0.0/8"}
 *
 * Read-only fields (`counters`) are ignored; any other unknown field is
 * refused, so a typo ("endpoint") cannot silently drop endpoints. Errors name
 * the file, the service, the field and what was expected. Each service's
 * values are checked in full once, when the change applies it
 * (normalizeService, whose errors name the field too).
 */
import { invalid } from '../errors';
import { isObject } from '../json';
import { parseHostPort, type Endpoint, type Service } from './model';

/** Fields `service ls` prints that a file may carry back but never sets. */
const READ_ONLY = new Set(['counters']);
const FIELDS = ['name', 'vip', 'port', 'proto', 'endpoints', 'affinitySeconds', 'affinity', 'masqueradeNotFrom'];

const show = (v: unknown) => (v === undefined ? 'nothing' : JSON.stringify(v));

export function parseServicesFile(text: string, file: string): Service[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw invalid(`${file}: not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(data))
    throw invalid(`${file}: expected a JSON array of services, got ${data === null ? 'null' : typeof data}`);
  return data.map((entry, i) => serviceEntry(entry, `${file}: entry ${i}`));
}

/** One entry of a services file, in either shape, as the model's Service (not yet normalized). */
export function serviceEntry(entry: unknown, where: string): Service {
  if (!isObject(entry)) throw invalid(`${where}: expected a service object, got ${show(entry)}`);
  if (typeof entry.name !== 'string') throw invalid(`${where}: "name": expected a string, got ${show(entry.name)}`);
  const at = `${where} (service ${entry.name})`;
  const bad = (field: string, expected: string, got: unknown = entry[field]) =>
    invalid(`${at}: "${field}": expected ${expected}, got ${show(got)}`);
  for (const k of Object.keys(entry)) {
    if (!FIELDS.includes(k) && !READ_ONLY.has(k))
      throw invalid(`${at}: unknown field "${k}" (a service has ${FIELDS.join(', ')})`);
  }

  // "vip": an address with "port" beside it, or IP:PORT in one string.
  if (typeof entry.vip !== 'string') throw bad('vip', 'an IP address, or IP:PORT');
  let vip = entry.vip;
  let port: unknown = entry.port;
  if (/^\[.*\]:\d+$|^[^:]+:\d+$/.test(vip)) {
    let hp: { ip: string; port: number };
    try {
      hp = parseHostPort(vip, 'vip');
    } catch {
      throw bad('vip', 'an IP address, or IP:PORT');
    }
    if (port !== undefined && Number(port) !== hp.port)
      throw invalid(`${at}: "vip" ${show(vip)} and "port" ${show(port)} name different ports`);
    vip = hp.ip;
    port = hp.port;
  }
  if (typeof port === 'string' && /^\d+$/.test(port)) port = Number(port);
  if (typeof port !== 'number') throw bad('port', 'a port number 1-65535 (or "vip" as IP:PORT)', port);

  if (entry.proto !== undefined && entry.proto !== 'tcp' && entry.proto !== 'udp') throw bad('proto', '"tcp" or "udp"');
  if (entry.endpoints !== undefined && entry.endpoints !== null && !Array.isArray(entry.endpoints))
    throw bad('endpoints', 'an array of endpoints');
  const endpoints = ((entry.endpoints as unknown[] | undefined | null) ?? []).map((e, j) =>
    endpointEntry(e, `${at}: "endpoints"[${j}]`),
  );

  if (entry.affinity !== undefined && entry.affinitySeconds !== undefined && entry.affinity !== entry.affinitySeconds)
    throw invalid(
      `${at}: "affinity" ${show(entry.affinity)} and "affinitySeconds" ${show(entry.affinitySeconds)} differ: give one`,
    );
  const affinity = entry.affinitySeconds ?? entry.affinity;
  if (affinity !== undefined && affinity !== null && typeof affinity !== 'number')
    throw bad(entry.affinitySeconds !== undefined ? 'affinitySeconds' : 'affinity', 'seconds (1-86400)', affinity);
  if (
    entry.masqueradeNotFrom !== undefined &&
    entry.masqueradeNotFrom !== null &&
    typeof entry.masqueradeNotFrom !== 'string'
  )
    throw bad('masqueradeNotFrom', 'a CIDR such as 10.0.0.0/8');

  const s: Service = {
    name: entry.name,
    vip,
    port,
    proto: (entry.proto as Service['proto'] | undefined) ?? 'tcp',
    endpoints,
  };
  if (typeof affinity === 'number') s.affinitySeconds = affinity;
  if (typeof entry.masqueradeNotFrom === 'string') s.masqueradeNotFrom = entry.masqueradeNotFrom;
  return s;
}

/** An endpoint: "IP:PORT[@WEIGHT]" (the CLI's --endpoint) or {"ip", "port", "weight"} (what service ls prints). */
function endpointEntry(e: unknown, where: string): Endpoint {
  const expected = 'an endpoint "IP:PORT[@WEIGHT]" or {"ip", "port", "weight"}';
  if (typeof e === 'string') {
    const m = /^(.*?)(?:@(\d+))?$/.exec(e)!;
    let hp: { ip: string; port: number };
    try {
      hp = parseHostPort(m[1]!, 'endpoint');
    } catch {
      throw invalid(`${where}: expected ${expected}, got ${show(e)}`);
    }
    return { ip: hp.ip, port: hp.port, weight: m[2] === undefined ? 1 : Number(m[2]) };
  }
  if (!isObject(e)) throw invalid(`${where}: expected ${expected}, got ${show(e)}`);
  for (const k of Object.keys(e))
    if (!['ip', 'port', 'weight'].includes(k))
      throw invalid(`${where}: unknown field "${k}" (an endpoint has ip, port, weight)`);
  if (typeof e.ip !== 'string') throw invalid(`${where}: "ip": expected an IP address, got ${show(e.ip)}`);
  const port = typeof e.port === 'string' && /^\d+$/.test(e.port) ? Number(e.port) : e.port;
  if (typeof port !== 'number') throw invalid(`${where}: "port": expected a port number 1-65535, got ${show(e.port)}`);
  if (e.weight !== undefined && typeof e.weight !== 'number')
    throw invalid(`${where}: "weight": expected a whole number from 1 to 999999, got ${show(e.weight)}`);
  return { ip: e.ip, port, weight: (e.weight as number | undefined) ?? 1 };
}
