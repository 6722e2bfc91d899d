/** Interface names as the kernel accepts them: a module of its own, so the NAT model can check one without loading netlink. */
import { invalid } from '../errors';

/** IFNAMSIZ: 16 bytes with the terminating NUL. */
export const IFNAMSIZ = 16;

/** The kernel's dev_valid_name(), checked before asking the kernel so the error can say why. */
export function validateIfname(name: string): void {
  if (typeof name !== 'string' || name.length === 0) throw invalid('interface name is empty');
  if (Buffer.byteLength(name) >= IFNAMSIZ) {
    throw invalid(
      `interface name ${JSON.stringify(name)} is ${Buffer.byteLength(name)} bytes; Linux allows at most ${IFNAMSIZ - 1}`,
    );
  }
  if (name === '.' || name === '..' || /[/:\s]/.test(name)) {
    throw invalid(`invalid interface name ${JSON.stringify(name)}: no '/', ':' or white space, and not '.' or '..'`);
  }
}
