/** The IPAM step of every bridge call: tsnet-ipam in process, anything else executed from CNI_PATH. */
import { CniError, CNI_ERR } from '../errors';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus } from '../ipam';
import { execPlugin } from '../delegate';
import type { CniEnv, NetConf, Result } from '../types';
import { BUILTIN_IPAM } from './config';

/** The network's IPAM plugin, one method per CNI operation. */
export function ipam(conf: NetConf, env: CniEnv) {
  const type = conf.ipam!.type;
  const builtin = type === BUILTIN_IPAM;
  const stdin = JSON.stringify(conf);
  /** Old plugins answer GC/STATUS with error 4 (unknown CNI_COMMAND): nothing to do for them. */
  const tolerateUnknown = (e: unknown) => {
    if (!(e instanceof CniError && e.code === CNI_ERR.invalidEnv)) throw e;
  };
  return {
    add: async (): Promise<Result> => (builtin ? ipamAdd(conf, env) : (await execPlugin(type, 'ADD', env, stdin))!),
    del: async (): Promise<void> => {
      if (builtin) await ipamDel(conf, env);
      else await execPlugin(type, 'DEL', env, stdin);
    },
    check: async (prev: Result): Promise<void> => {
      if (builtin) await ipamCheck(conf, env, prev);
      else await execPlugin(type, 'CHECK', env, JSON.stringify({ ...conf, prevResult: prev }));
    },
    gc: async (valid: Set<string>): Promise<void> => {
      if (builtin) await ipamGc(conf, valid);
      else await execPlugin(type, 'GC', env, stdin).catch(tolerateUnknown);
    },
    status: async (): Promise<void> => {
      if (builtin) await ipamStatus(conf);
      else await execPlugin(type, 'STATUS', env, stdin).catch(tolerateUnknown);
    },
  };
}
