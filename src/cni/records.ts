/**
 * What an ADD made, kept per attachment (network + container id + ifname)
 * under the tsnet state directory: STATE/cni/NETWORK/CONTAINERID:IFNAME.json.
 * The record is written before the first change and updated as ADD goes, so
 * a DEL or GC after a crash (or after the namespace is gone) knows exactly
 * what to remove: the host veth, the IPAM reservation, the NAT rules.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  deadWritersTemps,
  listDir,
  readJson,
  removeStaleTemps,
  stateDir as defaultStateDir,
  writeJsonAtomic,
  type WriteOptions,
} from '../state';
import { hasCode } from '../errors';
import { CNI_NAME_RE, validateContainerId, validateIfnameEnv } from './env';
import { validateNetworkName } from './ipam/config';
import type { NatRule } from '../nat/model';
import type { NetConf, Result } from './types';

export interface AttachmentRecord {
  version: 1;
  network: string;
  containerId: string;
  ifname: string;
  netns?: string;
  bridge: string;
  hostIfname: string;
  /** The network config as ADD got it (without prevResult / runtimeConfig): what a delegated IPAM DEL needs. */
  conf: NetConf;
  /** NAT state directory and backend the rules went to. */
  nat: { stateDir: string; backend: string; rules: NatRule[]; forwards: string[] };
  result?: Result;
  complete: boolean;
}

export class RecordStore {
  readonly dir: string;

  constructor(stateDir: string | undefined, network: string) {
    this.dir = path.join(defaultStateDir(stateDir), 'cni', validateNetworkName(network));
  }

  private file(containerId: string, ifname: string): string {
    validateContainerId(containerId); // never '..' or '/': these become a file name
    validateIfnameEnv(ifname);
    return path.join(this.dir, `${containerId}:${ifname}.json`);
  }

  /** A record; undefined when there is none, or only an unreadable one (a power loss can leave a new file empty). */
  private read(file: string): AttachmentRecord | undefined {
    try {
      return readJson<AttachmentRecord>(file);
    } catch (err) {
      if (hasCode(err, 'EINVAL')) return undefined; // DEL then removes what it can find by name, and the file
      throw err;
    }
  }

  get(containerId: string, ifname: string): AttachmentRecord | undefined {
    return this.read(this.file(containerId, ifname));
  }

  /**
   * Saves the record. `durable: false` only for a first version that names
   * only kernel objects (veth, addresses), which a power loss removes with
   * the record; never for one that replaces a durable version (a power loss
   * could leave the new file empty and lose what the old one said).
   */
  put(r: AttachmentRecord, o: WriteOptions = {}): void {
    writeJsonAtomic(this.file(r.containerId, r.ifname), r, o);
  }

  /** Removes the record, and temporary files a writer of it left when it was killed mid-write. */
  remove(containerId: string, ifname: string): void {
    const file = this.file(containerId, ifname);
    removeStaleTemps(this.dir, file);
    fs.rmSync(file, { force: true });
  }

  /**
   * Temporary files of records whose writer died mid-write, for attachments
   * `keep` does not hold (GC: an ADD killed before its first record was in
   * place leaves only a temporary, which no listing shows). A live writer's
   * (its pid still runs) is left alone.
   */
  removeDeadTemps(keep: (containerId: string, ifname: string) => boolean): void {
    for (const { file, temp } of deadWritersTemps(this.dir)) {
      const m = /^(.+):([^:]+)\.json$/.exec(file);
      if (m && !keep(m[1]!, m[2]!)) fs.rmSync(temp, { force: true });
    }
  }

  list(): AttachmentRecord[] {
    return listDir(this.dir)
      .filter((n) => n.endsWith('.json') && !n.startsWith('.'))
      .map((n) => this.read(path.join(this.dir, n)))
      .filter((r): r is AttachmentRecord => r !== undefined);
  }
}

/** The attachment records of every network in a state directory (names RecordStore could not have made are skipped). */
export function recordsByNetwork(stateDir?: string): { network: string; records: AttachmentRecord[] }[] {
  return listDir(path.join(defaultStateDir(stateDir), 'cni'))
    .filter((network) => CNI_NAME_RE.test(network))
    .map((network) => ({ network, records: new RecordStore(stateDir, network).list() }));
}
