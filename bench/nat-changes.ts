/**
 * A controller's NAT changes for bench/cni-loaded.ts: one process in the
 * agent's namespace sends `set-endpoints` changes through the agent socket,
 * one every INTERVAL ms, until it is signalled (as a kube-proxy-like
 * controller would, without a Node start per change). Prints how many it sent.
 *
 *   node nat-changes.js SOCKET STATE_DIR SERVICES INTERVAL_MS
 */
import { changeNat } from '../src/agent/client';

const [socket, stateDir, services, interval] = process.argv.slice(2);
let stop = false;
process.on('SIGTERM', () => (stop = true));

void (async () => {
  let k = 0;
  for (; !stop; k++) {
    const next = Date.now() + Number(interval);
    const name = `s${(k * 37) % Number(services)}`;
    const endpoint = { ip: `10.220.${(k >> 8) & 255}.${k & 255}`, port: 8080, weight: 1 };
    const r = await changeNat([{ kind: 'set-endpoints', name, endpoints: [endpoint] }], { socket, stateDir });
    if (r.by !== 'agent') throw new Error(`change ${k} not served by the agent: ${r.why}`);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, next - Date.now())));
  }
  process.stdout.write(`${k}\n`);
})().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exitCode = 1;
});
