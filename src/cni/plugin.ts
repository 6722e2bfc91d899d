/**
 * One CNI call as a library call: environment + stdin in, stdout + exit code
 * out. The plugin executables (./main) are a thin shell around this, and so
 * is a resident agent serving the same calls over a socket.
 */
import { CniError, CNI_ERR, toCniError } from './errors';
import { parseEnv } from './env';
import {
  LATEST,
  MIN_VERSION,
  SUPPORTED_VERSIONS,
  compare,
  convertResult,
  parseResult,
  requireSupported,
} from './version';
import { bridgeAdd, bridgeCheck, bridgeDel, bridgeGc, bridgeStatus } from './bridge';
import { clusterConf } from './bridge/cluster';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, validAttachments } from './ipam';
import type { CniEnv, NetConf, Result } from './types';
import type { EnginePool } from '../nat/pool';

export const PLUGINS = ['tsnet-bridge', 'tsnet-ipam'] as const;
export type PluginName = (typeof PLUGINS)[number];

export interface Invocation {
  stdout: string;
  exitCode: number;
  /** The CNI error code, when the call failed. */
  code?: number;
}

/** A failed call: the spec's error document, in the config's version when tsnet speaks it. */
export function errorInvocation(err: unknown, stdin: string): Invocation {
  const e = toCniError(err);
  return { stdout: `${JSON.stringify(e.toJSON(errorVersion(stdin)))}\n`, exitCode: 1, code: e.code };
}

interface Ops {
  add(conf: NetConf, env: CniEnv): Promise<Result>;
  del(conf: NetConf, env: CniEnv): Promise<void>;
  check(conf: NetConf, env: CniEnv, prev: Result | undefined): Promise<void>;
  gc(conf: NetConf, env: CniEnv): Promise<unknown>;
  status(conf: NetConf, env: CniEnv): Promise<void>;
}

/** tsnet-bridge's operations, each on the config as a cluster node fills it in (bridge/cluster.ts). */
const onNode =
  <A extends unknown[], R>(op: (conf: NetConf, env: CniEnv, ...rest: A) => Promise<R>) =>
  (conf: NetConf, env: CniEnv, ...rest: A): Promise<R> =>
    op(clusterConf(conf, env), env, ...rest);

const OPS: Record<PluginName, Ops> = {
  'tsnet-bridge': {
    add: onNode(bridgeAdd),
    del: onNode(bridgeDel),
    check: onNode(bridgeCheck),
    gc: onNode(bridgeGc),
    status: onNode(bridgeStatus),
  },
  'tsnet-ipam': {
    add: ipamAdd,
    del: ipamDel,
    check: ipamCheck,
    gc: (conf) => ipamGc(conf, validAttachments(conf)),
    status: ipamStatus,
  },
};

function decode(stdin: string): NetConf {
  let conf: unknown;
  try {
    conf = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(CNI_ERR.decode, `network config on stdin is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof conf !== 'object' || conf === null || Array.isArray(conf))
    throw new CniError(CNI_ERR.decode, 'network config on stdin is not a JSON object');
  return conf as NetConf;
}

/** The version to write an error in: the config's, when it is one we speak. */
function errorVersion(stdin: string): string {
  try {
    const v = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    if (typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v)) return v;
  } catch {
    // fall through
  }
  return LATEST;
}

export interface InvokeOptions {
  /** State directory when neither the config (stateDir) nor the caller (TSNET_STATE_DIR) names one: the agent's --state-dir. */
  stateDir?: string;
  /** The NAT engines of the serving process (the agent's): the call's rules are a diff of what they hold. */
  engines?: EnginePool;
}

export async function invoke(
  plugin: PluginName,
  envVars: NodeJS.ProcessEnv,
  stdin: string,
  opts: InvokeOptions = {},
): Promise<Invocation> {
  try {
    const env = parseEnv(envVars, opts);
    if (opts.engines) env.engines = opts.engines;
    if (env.command === 'VERSION') {
      return {
        stdout: `${JSON.stringify({ cniVersion: errorVersion(stdin), supportedVersions: SUPPORTED_VERSIONS })}\n`,
        exitCode: 0,
      };
    }
    const conf = decode(stdin);
    const version = requireSupported(conf.cniVersion);
    const min = MIN_VERSION[env.command];
    if (min && compare(version, min) < 0)
      throw new CniError(
        CNI_ERR.incompatibleVersion,
        `config version ${version} does not allow ${env.command} (needs ${min} or later)`,
      );
    if (conf.type !== undefined && conf.type !== plugin && !(plugin === 'tsnet-ipam' && conf.ipam?.type === plugin)) {
      throw new CniError(
        CNI_ERR.invalidConfig,
        `network ${conf.name}: this is ${plugin}, but the config's type is ${JSON.stringify(conf.type)}`,
      );
    }
    const ops = OPS[plugin];
    switch (env.command) {
      case 'ADD': {
        const result = await ops.add(conf, env);
        return { stdout: `${JSON.stringify(convertResult(result, version))}\n`, exitCode: 0 };
      }
      case 'DEL':
        await ops.del(conf, env);
        break;
      case 'CHECK':
        await ops.check(conf, env, conf.prevResult === undefined ? undefined : parseResult(conf.prevResult));
        break;
      case 'GC':
        await ops.gc(conf, env);
        break;
      case 'STATUS':
        await ops.status(conf, env);
        break;
    }
    return { stdout: '', exitCode: 0 };
  } catch (err) {
    return errorInvocation(err, stdin);
  }
}
