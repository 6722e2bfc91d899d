/** The agent's pure parts: the shim wire format, its metrics registry, flag parsing; its NAT service over a socket without root. */
import test from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  FrameReader,
  decodeNatRequest,
  decodeReply,
  decodeRequest,
  encodeNatRequest,
  encodeReply,
  encodeRequest,
  frame,
  requestKind,
  HELLO,
  MAX_FRAME,
} from '../../src/agent/protocol';
import { agentMetrics } from '../../src/agent/metrics';
import { Agent, parseDuration } from '../../src/agent/server';
import { NatService } from '../../src/agent/nat-service';
import type { AgentEngines } from '../../src/agent/engines';
import type { Call } from '../../src/agent/transport';
import { changeNat } from '../../src/agent/client';
import { TsnetError, contextualize, invalid, isInvalidInput } from '../../src/errors';

const req = {
  plugin: 'tsnet-bridge',
  netns: '4 4026531840',
  deadlineMs: 120000,
  env: { CNI_COMMAND: 'ADD', CNI_ARGS: 'A=1;B=x=y', EMPTY: '' },
  stdin: '{"cniVersion":"1.1.0","name":"ü"}',
};

test('a request survives the wire byte by byte, and frames split or merged anywhere are reassembled', (t) => {
  const bytes = encodeRequest(req);
  const one = new FrameReader();
  const frames: Buffer[] = [];
  for (const b of bytes) frames.push(...one.push(Buffer.from([b])));
  t.deepEqual(decodeRequest(frames), req);
  const all = new FrameReader().push(Buffer.concat([bytes, frame('extra')]));
  t.is(all.length, 4);
  t.is(all[3]!.toString(), 'extra');
});

test('malformed requests are refused, not half-read', (t) => {
  const [head, env, stdin] = new FrameReader().push(encodeRequest(req));
  t.throws(() => decodeRequest([head!, env!]), { message: /incomplete/ });
  t.throws(() => decodeRequest([Buffer.from('tsnet-cni/2\0tsnet-bridge\x004 1\x001000\0'), env!, stdin!]), {
    message: /not a tsnet-cni\/1 request/,
  });
  t.throws(() => decodeRequest([Buffer.from('tsnet-cni/1\0tsnet-bridge\0me\x001000\0'), env!, stdin!]), {
    message: /namespace identity/,
  });
  t.throws(() => decodeRequest([Buffer.from('tsnet-cni/1\0tsnet-bridge\x004 1\x00-5\0'), env!, stdin!]), {
    message: /deadline/,
  });
  const huge = Buffer.alloc(4);
  huge.writeUInt32LE(MAX_FRAME + 1);
  t.throws(() => new FrameReader().push(huge), { message: /larger than/ });
});

const natReq = {
  netns: '4 4026531840',
  target: { stateDir: '/var/lib/tsnet', netns: { ref: 'c1', id: '4 4026532300' }, backend: 'netlink' },
  changes: [{ kind: 'set-endpoints', name: 'web', endpoints: [{ ip: '10.0.0.2', port: 80, weight: 1 }] }],
};

test('a NAT request (the CLI to the agent) survives the wire and is told apart from a CNI call by its first frame', (t) => {
  const frames = new FrameReader().push(encodeNatRequest(natReq));
  t.is(frames.length, 3);
  t.is(requestKind(frames[0]!), 'nat');
  t.is(requestKind(new FrameReader().push(encodeRequest(req))[0]!), 'cni');
  t.is(requestKind(Buffer.from('tsnet-other/1\0')), undefined);
  t.deepEqual(decodeNatRequest(frames), natReq);
});

test('malformed NAT requests are refused before anything is applied: relative state dir, bad target namespace, not a change, not JSON', (t) => {
  const [head, target, changes] = new FrameReader().push(encodeNatRequest(natReq));
  const with_ = (tg: unknown, ch: unknown = natReq.changes) => [
    head!,
    Buffer.from(JSON.stringify(tg)),
    Buffer.from(JSON.stringify(ch)),
  ];
  t.throws(() => decodeNatRequest([head!, target!]), { message: /incomplete/ });
  t.throws(() => decodeNatRequest(with_({ ...natReq.target, stateDir: 'state' })), { message: /absolute stateDir/ });
  t.throws(() => decodeNatRequest(with_({ ...natReq.target, netns: { ref: 'c1' } })), { message: /target namespace/ });
  t.throws(() => decodeNatRequest(with_({ ...natReq.target, netns: { ref: '', id: '4 1' } })), {
    message: /target namespace/,
  });
  t.throws(() => decodeNatRequest(with_(natReq.target, [{ name: 'web' }])), { message: /not a change/ });
  t.throws(() => decodeNatRequest(with_(natReq.target, [])), { message: /non-empty array/ });
  t.throws(() => decodeNatRequest([head!, Buffer.from('{'), changes!]), { message: /not JSON/ });
  t.throws(() => decodeNatRequest([Buffer.from('tsnet-nat/1\0me\0'), target!, changes!]), {
    message: /namespace identity/,
  });
});

test('replies carry the exit status and stdout; a deny is told apart', (t) => {
  const [f] = new FrameReader().push(encodeReply(1, '{"code":7}\n'));
  t.deepEqual(decodeReply(f!), { exitCode: 1, stdout: '{"code":7}\n' });
  t.deepEqual(decodeReply(Buffer.from('deny peer uid 1000 (pid 5) is not root')), {
    deny: 'peer uid 1000 (pid 5) is not root',
  });
});

test('metrics: each agent has its own registry (two in one process never count into each other)', async (t) => {
  const a = agentMetrics();
  const b = agentMetrics();
  a.cniRequests.inc({ plugin: 'tsnet-bridge', command: 'ADD', result: 'ok' });
  a.cniRequests.inc({ plugin: 'tsnet-bridge', command: 'ADD', result: 'ok' });
  const text = await a.registry.metrics();
  t.regex(text, /^tsnet_cni_requests_total\{plugin="tsnet-bridge",command="ADD",result="ok"\} 2$/m);
  t.notRegex(await b.registry.metrics(), /^tsnet_cni_requests_total\{/m);
  t.regex(text, /^# TYPE process_resident_memory_bytes gauge$/m, "Node's process metrics are in each");
});

test('durations: 10s, 500ms, 1m, plain seconds; nonsense and sub-100ms refused', (t) => {
  t.is(parseDuration('10s'), 10_000);
  t.is(parseDuration('500ms'), 500);
  t.is(parseDuration('1m'), 60_000);
  t.is(parseDuration('2'), 2000);
  t.is(parseDuration('1h'), 3_600_000);
  t.throws(() => parseDuration('soon'), { message: /invalid duration/ });
  t.throws(() => parseDuration('5ms'), { message: /too short/ });
});

/**
 * An agent's NAT service behind a unix socket, as the transport would hand it
 * calls (no peer checks: no root here), over engines whose every change fails
 * with `fail`.
 */
async function failingAgent(fail: unknown): Promise<{ socket: string; close(): Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-unit-agent-'));
  const socket = path.join(dir, 'agent.sock');
  const netns = '4 4026531840';
  const engines = {
    get: () => ({ dir, change: () => Promise.reject(fail) }),
    close: () => {},
  } as unknown as AgentEngines;
  const nat = new NatService({
    netns,
    engines,
    metrics: agentMetrics(),
    log: () => {},
    stopping: () => false,
    track: () => {},
    remember: () => {},
  });
  const server = net.createServer((c) => {
    c.write(frame(`${HELLO} ${netns}`));
    const reader = new FrameReader();
    const frames: Buffer[] = [];
    c.on('data', (chunk: Buffer) => {
      frames.push(...reader.push(chunk));
      if (frames.length !== 3) return;
      const call: Call = {
        kind: requestKind(frames[0]!),
        frames,
        deny: (_reason, why) => c.end(frame(`deny ${why}`)),
        decode: (decode) => ({ ...decode(frames), netns }),
        reply: (status, stdout) => c.end(encodeReply(status, stdout)),
        drop: () => c.destroy(),
      };
      nat.serve(call);
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return {
    socket,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** What the CLI would see of an error: the parts a caller can ask about. */
const seen = (e: unknown) => {
  const x = e as TsnetError;
  return { message: x.message, code: x.code, errno: x.errno, syscall: x.syscall, invalidInput: isInvalidInput(x) };
};

test('a NAT change failed in the agent raises in the CLI as it would have here: a kernel EINVAL keeps errno and syscall (not bad input), bad input stays bad input', async (t) => {
  const kernel = contextualize(
    'writing sysctl net.ipv4.conf.all.route_localnet in namespace r1',
    Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL', errno: -22, syscall: 'write' }),
  );
  const bad = invalid('service web: port 70000 is not a port (1-65535)');
  const change = [{ kind: 'delete-service' as const, name: 'web' }];
  for (const [what, err] of [
    ['kernel EINVAL', kernel],
    ['bad input', bad],
  ] as const) {
    const agent = await failingAgent(err);
    try {
      const e = await t.throwsAsync(changeNat(change, { socket: agent.socket, stateDir: '/nonexistent/tsnet' }));
      t.deepEqual(seen(e), seen(err), what);
    } finally {
      await agent.close();
    }
  }
  t.like(seen(kernel), { code: 'EINVAL', errno: 22, syscall: 'write', invalidInput: false });
  t.like(seen(bad), { code: 'EINVAL', errno: undefined, invalidInput: true });
});

test('two agents in one process share nothing: starting side by side leaves the umask as it was, each stops alone and removes only its own socket', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-unit-agents-'));
  const umask = process.umask();
  const opts = (name: string) => ({
    socket: path.join(dir, name, 'run', 'agent.sock'),
    stateDir: path.join(dir, name, 'state'),
    metrics: '',
    log: () => {},
  });
  const [a, b] = await Promise.all([Agent.start(opts('a')), Agent.start(opts('b'))]);
  try {
    t.is(process.umask(), umask, 'the umask the sockets were born under is not left behind');
    t.is(fs.statSync(a.socket).mode & 0o777, 0o600);
    t.is(fs.statSync(b.socket).mode & 0o777, 0o600);
    t.not(a.metrics.registry, b.metrics.registry);
    await a.stop();
    t.false(fs.existsSync(a.socket));
    t.true(fs.statSync(b.socket).isSocket(), "the other agent's socket is still there");
    const hello = await new Promise<string>((resolve, reject) => {
      const c = net.connect(b.socket);
      c.once('data', (d: Buffer) => {
        c.destroy();
        resolve(new FrameReader().push(d)[0]!.toString());
      });
      c.once('error', reject);
    });
    t.regex(hello, /^(tsnet-agent\/1 \d+ \d+|deny peer uid \d+ .* is not root)$/, 'and it still answers');
  } finally {
    await Promise.all([a.stop(), b.stop()]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
