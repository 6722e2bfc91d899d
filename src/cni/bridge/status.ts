/** CNI STATUS (1.1) of the bridge plugin. */
import { BACKENDS, resolveChoice } from '../../nat/backends';
import { CniError, CNI_ERR } from '../errors';
import type { CniEnv, NetConf } from '../types';
import { parseBridgeConf } from './config';
import { ipam } from './ipam-step';

/** CNI STATUS (1.1): ready unless IPAM cannot allocate or the NAT tools are missing. */
export async function bridgeStatus(conf: NetConf, env: CniEnv): Promise<void> {
  const c = parseBridgeConf(conf, env);
  if (c.ipMasq || conf.capabilities?.portMappings) {
    const { systemTool } = await import('../../nat/exec');
    const fs = await import('node:fs');
    for (const tool of BACKENDS[resolveChoice(c.natBackend)].binaries) {
      try {
        fs.accessSync(systemTool(tool), fs.constants.X_OK);
      } catch {
        throw new CniError(
          CNI_ERR.notAvailable,
          `network ${c.name}: ${tool} is not installed (needed for ipMasq and port mappings with natBackend ${c.natBackend})`,
        );
      }
    }
  }
  await ipam(conf, env).status();
}
