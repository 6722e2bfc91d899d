import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  NetlinkError,
  TsnetError,
  contextualize,
  internal,
  invalid,
  isExists,
  isInvalidInput,
  isNotFound,
  isTsnetCode,
} from '../../src/errors';
import { ERRNO_NAMES } from '../../src/errno';
import { CNI_ERR, CniError, reportInput, toCniError } from '../../src/cni/errors';
import { errorInvocation } from '../../src/cni/plugin';
import { PACKAGE_ROOT, loadAddon } from '../../src/native';
import { extackText } from '../../src/netlink/socket';

test('a bug (TypeError) re-wrapped with context is an internal error, never bad input', (t) => {
  const bug = new TypeError("Cannot read properties of undefined (reading 'index')");
  const e = contextualize('creating veth v1 in namespace c1', bug);
  t.is(e.code, 'EINTERNAL');
  t.false(isInvalidInput(e));
  t.regex(
    e.message,
    /^creating veth v1 in namespace c1: internal error \(a bug in tsnet, please report it\): TypeError: Cannot read/,
  );
  t.is(e.cause, bug, 'the cause is kept');
  const cni = toCniError(e);
  t.is(cni.code, CNI_ERR.internal, 'a bug is CNI 999, not 7 "invalid network config"');
  t.is(toCniError(bug).code, CNI_ERR.internal);
  t.regex(toCniError(bug).message, /internal error/);
});

test('bad input is the only source of EINVAL without errno, and of CNI 7, through any number of re-wraps', (t) => {
  const e = contextualize('network n1', contextualize('ipam', invalid('subnet 10.0.0.0/33 is not a CIDR')));
  t.true(isInvalidInput(e));
  t.is(toCniError(e).code, CNI_ERR.invalidConfig);
  // The kernel's own EINVAL is not bad input.
  const kernel = contextualize('creating bridge br0', new NetlinkError(22, 'Invalid argument'));
  t.is(kernel.code, 'EINVAL');
  t.is(kernel.errno, 22);
  t.false(isInvalidInput(kernel));
  t.is(toCniError(kernel).code, CNI_ERR.internal);
  t.is(toCniError(new TsnetError('lock held', { code: 'EAGAIN' })).code, CNI_ERR.tryAgainLater);
  t.is(toCniError(internal('sync')).code, CNI_ERR.internal);
});

test('system errors keep errno (positive, as errno(3)), code, syscall and cause, in the CODE (text) form', (t) => {
  let fsErr: unknown;
  try {
    fs.readFileSync('/nonexistent/tsnet-test');
  } catch (err) {
    fsErr = err;
  }
  t.is((fsErr as NodeJS.ErrnoException).errno, -2, "Node's own convention is negative");
  const e = contextualize('reading sysctl net.ipv4.ip_forward in namespace c1', fsErr);
  t.is(e.message, 'reading sysctl net.ipv4.ip_forward in namespace c1: ENOENT (No such file or directory)');
  t.is(e.code, 'ENOENT');
  t.is(e.errno, 2);
  t.is(e.syscall, 'open');
  t.is(e.cause, fsErr);
  const again = contextualize('outer', e);
  t.deepEqual([again.code, again.errno, again.syscall, again.cause], ['ENOENT', 2, 'open', e]);
  const nl = new NetlinkError(17, 'ipv4: Address already assigned');
  t.is(nl.message, 'EEXIST (File exists: ipv4: Address already assigned)');
  t.is(nl.errno, 17);
  t.is(nl.detail, 'ipv4: Address already assigned');
});

test("CNI: a validator's bad input becomes the caller's code, anything else keeps its meaning", (t) => {
  const e = t.throws(() => reportInput(CNI_ERR.invalidEnv, 'CNI_IFNAME', invalid('interface name is empty')));
  t.true(e instanceof CniError);
  t.is((e as CniError).code, CNI_ERR.invalidEnv);
  t.is(e!.message, 'CNI_IFNAME: interface name is empty');
  const bug = new RangeError('boom');
  t.is(
    t.throws(() => reportInput(CNI_ERR.invalidConfig, 'x', bug)),
    bug,
  );
});

test("extended ack: the kernel's text is read from NLMSG_ERROR attributes, capped or not", (t) => {
  const text = 'Chain not found';
  const attr = Buffer.alloc(4 + ((text.length + 1 + 3) & ~3));
  attr.writeUInt16LE(4 + text.length + 1, 0);
  attr.writeUInt16LE(1, 2); // NLMSGERR_ATTR_MSG
  attr.write(text, 4);
  const orig = Buffer.alloc(16);
  orig.writeUInt32LE(16 + 8, 0); // the request was 24 bytes; capped: only its header is echoed
  const capped = Buffer.concat([Buffer.from([0xfe, 0xff, 0xff, 0xff]), orig, attr]);
  t.is(extackText(0x100 | 0x200, capped), text);
  const full = Buffer.concat([Buffer.from([0xfe, 0xff, 0xff, 0xff]), orig, Buffer.alloc(8), attr]);
  t.is(extackText(0x200, full), text);
  t.is(extackText(0x100, capped), undefined, 'no NLM_F_ACK_TLVS: no text');
});

test("codes are a union: the errno names Node knows, and tsnet's own; the predicates ask what kind of failure it is", (t) => {
  t.deepEqual([...ERRNO_NAMES].sort(), Object.keys(os.constants.errno).sort(), "the type's list is Node's");
  // @ts-expect-error ENOTFOUND is getaddrinfo's, not a code tsnet uses
  t.truthy(new TsnetError('x', { code: 'ENOTFOUND' }));
  t.true(isTsnetCode('EEXIST') && isTsnetCode('E135') && isTsnetCode('EINTERNAL') && isTsnetCode('ENOADDON'));
  t.false(isTsnetCode('ERR_INVALID_ARG_TYPE') || isTsnetCode('ENOTFOUND') || isTsnetCode(22));

  let fsErr: unknown;
  try {
    fs.readFileSync('/nonexistent/tsnet-test');
  } catch (err) {
    fsErr = err;
  }
  t.true(isNotFound(fsErr), "Node's own ENOENT");
  t.true(isNotFound(new TsnetError('interface eth9 not found in namespace c1', { code: 'ENODEV' })));
  t.true(isNotFound(contextualize('opening namespace c1', fsErr)), 'through a re-wrap');
  t.false(isNotFound(new NetlinkError(17)));
  t.true(isExists(contextualize('creating veth v1', new NetlinkError(17))));
  t.false(isExists(invalid('x')));
  t.false(isExists(undefined) || isNotFound(null) || isInvalidInput('EINVAL'));
});

test('a missing native addon is an install error that says what to run (ENOADDON), not a bug, in the library, CNI and the CLI', (t) => {
  const e = t.throws(() => loadAddon('/nonexistent/tsnet/tsnet_native.node')) as TsnetError;
  t.is(e.code, 'ENOADDON');
  t.is(
    e.message,
    `tsnet's native addon is not built: /nonexistent/tsnet/tsnet_native.node: run \`npm ci\` or \`npm rebuild\` in ${PACKAGE_ROOT}`,
  );
  const wrapped = contextualize('opening namespace c1', e);
  t.is(wrapped.code, 'ENOADDON', 'a re-wrap keeps it');
  t.notRegex(wrapped.message, /internal error|bug/);
  const cni = JSON.parse(errorInvocation(wrapped, '{"cniVersion":"1.1.0"}').stdout) as { code: number; msg: string };
  t.is(cni.msg, wrapped.message, 'CNI: the same words, no "bug in tsnet"');
  t.is(cni.code, CNI_ERR.internal);

  // A copy of the CLI (its bundle) whose package has no native/build: a command that needs the addon says what to run.
  const dist = path.join(__dirname, '..', '..');
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnet-noaddon-'));
  try {
    fs.copyFileSync(path.join(dist, '..', 'package.json'), path.join(root, 'package.json'));
    for (const rel of ['src/cli/main.js', 'src/cli/table.js', 'bundle/link.js']) {
      fs.mkdirSync(path.dirname(path.join(root, 'dist', rel)), { recursive: true });
      fs.copyFileSync(path.join(dist, rel), path.join(root, 'dist', rel));
    }
    const r = spawnSync(process.execPath, [path.join(root, 'dist/src/cli/main.js'), 'link', 'ls'], {
      encoding: 'utf8',
    });
    t.is(r.status, 1, r.stderr);
    t.is(r.stdout, '');
    t.regex(r.stderr, /^tsnet: .*tsnet's native addon is not built: .*: run `npm ci` or `npm rebuild` in \S+\n$/);
    t.true(r.stderr.includes(root), `names the package root of the copy: ${r.stderr}`);
    t.notRegex(r.stderr, /internal error|bug/);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
