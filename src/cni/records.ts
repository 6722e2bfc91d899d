/**
 * What an ADD made, kept per attachment (network + container id + ifname)
 * under the tsnet state directory: STATE/cni/NETWORK/CONTAINERID:IFNAME.json.
 * The record is written before the first change and updated as ADD goes, so
 * a DEL or GC after a crash (or after the namespace is gone) knows exactly
 * what to remove: the host veth, the IPAM reservation, the NAT rules.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { listDir, readJson, stateDir as defaultStateDir, writeJsonAtomic } from '../state';
import { validateContainerId, validateIfnameEnv } from './env';
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

  get(containerId: string, ifname: string): AttachmentRecord | undefined {
    return readJson<AttachmentRecord>(this.file(containerId, ifname));
  }

  put(r: AttachmentRecord): void {
    writeJsonAtomic(this.file(r.containerId, r.ifname), r);
  }

  remove(containerId: string, ifname: string): void {
    fs.rmSync(this.file(containerId, ifname), { force: true });
  }

  list(): AttachmentRecord[] {
    return listDir(this.dir).filter((n) => n.endsWith('.json') && !n.startsWith('.'))
      .map((n) => readJson<AttachmentRecord>(path.join(this.dir, n)))
      .filter((r): r is AttachmentRecord => r !== undefined);
  }
}
