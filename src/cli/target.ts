/** The namespace a command acts on: `--netns` (a name, a pid or a path), else the one this process runs in. */
import * as netns from '../netns';
import type { Cli } from './context';

const opened = new WeakMap<Cli, netns.NetNs>();

/** Opened once per run and closed when the command is done; `netns.current()` needs no closing. */
export function target(cli: Cli): netns.NetNs {
  const ref = cli.globals().netns;
  if (!ref) return netns.current();
  let h = opened.get(cli);
  if (!h) {
    const made = netns.resolve(ref);
    opened.set(cli, made);
    cli.onExit(() => made.close());
    h = made;
  }
  return h;
}
