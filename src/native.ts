/** The N-API addon built from native/ by `npm ci` (node-gyp). */
import * as path from 'node:path';

export interface Native {
  setns(fd: number, nstype: number): void;
  unshare(flags: number): void;
  createNetnsAt(path: string): void;
  mount(source: string, target: string, fstype: string, flags: number, data?: string): void;
  umount2(target: string, flags: number): void;
  gettid(): number;
  tryLock(fd: number, exclusive?: boolean): boolean;
  /** SO_PEERCRED of a connected unix socket. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  constants: {
    CLONE_NEWNET: number; CLONE_NEWNS: number;
    MS_BIND: number; MS_REC: number; MS_SHARED: number; MS_SLAVE: number; MS_PRIVATE: number;
    MNT_DETACH: number;
  };
}

/** Package root: dist/src/native.js and src/native.ts both sit two levels below it. */
export const PACKAGE_ROOT = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? '../..' : '..');

/** The CNI shim executable (native/cni_shim.c), built next to the addon. */
export const SHIM_PATH = path.join(PACKAGE_ROOT, 'native', 'build', 'Release', 'tsnet-cni-shim');

let loaded: Native | undefined;

export function native(): Native {
  if (!loaded) {
    const file = path.join(PACKAGE_ROOT, 'native', 'build', 'Release', 'tsnet_native.node');
    try {
      loaded = require(file) as Native;
    } catch (err) {
      throw new Error(`tsnet's native addon is not built (${file}): run \`npm ci\` or \`npm rebuild\` in ${PACKAGE_ROOT}: ${(err as Error).message}`);
    }
  }
  return loaded;
}
