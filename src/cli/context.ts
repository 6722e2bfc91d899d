/** What every command module gets from the program: the global options as parsed, and a place to close what it opened. */
import type { Command } from 'commander';
import type { Globals } from './globals';

export interface Cli {
  readonly program: Command;
  /** The global options (before or after the command word: the same). */
  globals(): Globals;
  json(): boolean;
  stateDir(): string | undefined;
  /** `--etcd URLS`, else $TSNET_ETCD; undefined when neither is given. */
  etcd(): string | undefined;
  /** Runs `fn` once the command is done, whatever its outcome. */
  onExit(fn: () => void): void;
}

/** A command family: one module under commands/, registering its words on the program. */
export interface CommandModule {
  register(program: Command, cli: Cli): void;
}
