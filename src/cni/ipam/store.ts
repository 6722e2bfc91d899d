/**
 * The reservation store, in host-local's on-disk layout so either plugin can
 * read the other's reservations: DATADIR/NETWORK/ holds one file per reserved
 * address (named by the address, containing "CONTAINERID\r\nIFNAME"),
 * `last_reserved_ip.N` per range set, and `lock` (flock) serializing every
 * change. Files are created whole (createExclusive) so a crash never leaves an
 * empty or half-written reservation.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createExclusive, listDir, removeStaleTemps, syncDir, withLockFile } from '../../state';
import { parseIp } from '../../addr/cidr';
import { validateNetworkName } from './config';

export interface Reservation {
  ip: string;
  containerId: string;
  ifname: string;
}

const LAST_RESERVED = 'last_reserved_ip.';

export class IpamStore {
  readonly dir: string;

  constructor(dataDir: string, network: string) {
    this.dir = path.join(dataDir, validateNetworkName(network));
  }

  /** Runs `fn` holding the network's lock (the same `lock` file host-local uses). */
  locked<T>(fn: () => Promise<T> | T, timeoutMs = 30_000): Promise<T> {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    return withLockFile(path.join(this.dir, 'lock'), fn, timeoutMs);
  }

  private file(ip: string): string {
    return path.join(this.dir, parseIp(ip).address); // parsed: never a path component other than an address
  }

  /** Reserves `ip` for the container; false when it is already taken. */
  reserve(ip: string, containerId: string, ifname: string, rangeSet: number): boolean {
    if (!createExclusive(this.file(ip), `${containerId}\r\n${ifname}`)) return false;
    fs.writeFileSync(path.join(this.dir, `${LAST_RESERVED}${rangeSet}`), parseIp(ip).address);
    return true;
  }

  lastReserved(rangeSet: number): string | undefined {
    try {
      return parseIp(fs.readFileSync(path.join(this.dir, `${LAST_RESERVED}${rangeSet}`), 'utf8').trim()).address;
    } catch {
      return undefined;
    }
  }

  /** Every reservation (files whose name is an address). */
  list(): Reservation[] {
    const out: Reservation[] = [];
    for (const name of listDir(this.dir)) {
      if (name.startsWith('.') || name === 'lock' || name.startsWith(LAST_RESERVED)) continue;
      let ip: string;
      try {
        ip = parseIp(name).address;
      } catch {
        continue;
      }
      let text: string;
      try {
        text = fs.readFileSync(path.join(this.dir, name), 'utf8');
      } catch {
        continue;
      }
      const [containerId = '', ifname = ''] = text.split(/\r?\n/);
      out.push({ ip, containerId: containerId.trim(), ifname: ifname.trim() });
    }
    return out;
  }

  byAttachment(containerId: string, ifname: string): Reservation[] {
    return this.list().filter((r) => r.containerId === containerId && r.ifname === ifname);
  }

  release(ip: string): void {
    fs.rmSync(this.file(ip), { force: true });
  }

  /** Releases everything reserved for containerId + ifname; returns the addresses released. */
  releaseAttachment(containerId: string, ifname: string): string[] {
    const mine = this.byAttachment(containerId, ifname);
    for (const r of mine) this.release(r.ip);
    if (mine.length && fs.existsSync(this.dir)) syncDir(this.dir);
    return mine.map((r) => r.ip);
  }

  /** Leftover temporary files of writers that died (createExclusive's), removed under the lock. */
  removeStaleTemps(): void {
    removeStaleTemps(this.dir);
  }
}
