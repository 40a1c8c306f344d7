/**
 * README "Install as a service": the package as npm packs it, installed globally into a
 * temporary prefix, runs without the checkout's dev tools (no tsx, no TypeScript): `oneport
 * --version`, `--help`, `init`, and `serve` answering /healthz on its port; and, as the systemd
 * unit runs it, an unprivileged user with only CAP_NET_BIND_SERVICE serving 443. Needs the npm
 * registry for the runtime dependencies (nothing else); the npm cache is preferred.
 */
import t from 'tap';
import { type ChildProcess, type ChildProcessByStdio, type ChildProcessWithoutNullStreams, execFile, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { once } from 'node:events';
import { Agent, request } from 'undici';
import { freePort } from '../helpers/net.js';
import { deadline } from '../helpers/wait.js';
import { missingCommands, netnsUnavailable } from '../helpers/netns.js';
import { VERSION } from '../../gateway/version.js';

const run = promisify(execFile);
// The build (tsc, in prepack) alone takes a minute on two idle cores: more than the usual 180 s under load.
t.setTimeout(420_000);
const ROOT = new URL('../..', import.meta.url).pathname;

t.test('npm pack, npm install -g into a prefix, then the installed oneport runs', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'oneport-install-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  // prepack builds dist/ with tsc: the tarball holds compiled JavaScript only.
  const packed = await run('npm', ['pack', '--silent', '--pack-destination', work], { cwd: ROOT, maxBuffer: 1 << 24 });
  const tarball = join(work, packed.stdout.trim().split('\n').pop() ?? '');
  t.ok(existsSync(tarball), `npm pack wrote ${tarball}`);
  // From the checkout, once built (npm pack just did): npx finds the package's own bin.
  const npx = await run('npx', ['--no-install', 'oneport', '--version'], { cwd: ROOT });
  t.equal(npx.stdout.trim(), VERSION, '`npx oneport` runs from the checkout');
  const listing = await run('tar', ['-tzf', tarball]);
  const files = listing.stdout.split('\n');
  t.ok(files.includes('package/dist/gateway/cli.js'), 'the compiled CLI is packed');
  t.ok(files.includes('package/deploy/systemd/oneport.service'), 'the systemd unit is packed');
  t.notOk(files.some((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')), 'no TypeScript sources are packed');
  t.notOk(files.some((f) => f.startsWith('package/test/')), 'no tests are packed');

  const prefix = join(work, 'prefix');
  try {
    await run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: work, maxBuffer: 1 << 24 });
  } catch (e) {
    const text = String((e as { stderr?: string }).stderr ?? e);
    if (/ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ENOTCACHED|ETIMEDOUT/.test(text)) {
      t.pass('SKIPPED', { skip: `the npm registry is not reachable and the npm cache lacks a runtime dependency: ${text.split('\n')[0]}` });
      return;
    }
    throw e;
  }
  const bin = join(prefix, 'bin', 'oneport');
  // PATH without the checkout's node_modules/.bin: only node and the installed package.
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${join(prefix, 'bin')}:/usr/local/bin:/usr/bin:/bin` };
  for (const k of Object.keys(env)) if (k.startsWith('ONEPORT_')) delete env[k];
  const version = await run('oneport', ['--version'], { env });
  t.equal(version.stdout.trim(), VERSION, 'oneport on the PATH prints its version');
  const help = await run(bin, ['--help'], { env });
  for (const cmd of ['serve', 'init', 'doctor', 'user', 'vm']) t.match(help.stdout, new RegExp(`\\n  ${cmd}\\b`), `--help lists ${cmd}`);

  const state = join(work, 'state');
  const init = await run(bin, ['init', '--state', state], { env });
  t.match(init.stdout, /is ready/, 'oneport init makes a state folder');

  const port = await freePort();
  const { child } = await serve(t, spawn(bin, ['serve', '--state', state, '--listen', `127.0.0.1:${port}`], { env, stdio: ['ignore', 'ignore', 'pipe'] }));
  const dispatcher = new Agent({ connect: { ca: readFileSync(join(state, 'ca.pem'), 'utf8') } });
  t.teardown(() => dispatcher.close());
  const health = await request(`https://127.0.0.1:${port}/healthz`, { dispatcher });
  t.same(await health.body.json(), { status: 'ok' }, 'the installed gateway answers on its port');
  const portal = await request(`https://127.0.0.1:${port}/vendor/novnc/core/rfb.js`, { dispatcher });
  await portal.body.dump();
  t.equal(portal.statusCode, 200, 'the browser client from the installed dependencies is served');
  child.kill('SIGTERM');
  const [code] = (await Promise.race([once(child, 'exit'), deadline(15_000, 'exit after SIGTERM')])) as [number | null];
  t.equal(code, 0, 'SIGTERM stops it cleanly');

  // As the systemd unit runs it: an unprivileged user, no new privileges, CAP_NET_BIND_SERVICE as
  // its only capability (ambient), serving 443; without the capability the same start fails. In a
  // private network namespace, where 443 is free and unprivileged ports start at 1024.
  const cannot = netnsUnavailable() || missingCommands([['setpriv', 'util-linux'], ['ip', 'iproute2']]);
  if (cannot) {
    t.pass('SKIPPED', { skip: cannot });
    return;
  }
  chmodSync(work, 0o755); // the service user must reach the installed package
  const svcState = join(work, 'svc-state');
  mkdirSync(svcState, { mode: 0o700 });
  chownSync(svcState, NOBODY, NOBODY);
  const asService = (caps: boolean): ChildProcessWithoutNullStreams =>
    spawn(
      'unshare',
      // Without tap's process tracking (NODE_OPTIONS --import of @tapjs/processinfo, which tap adds
      // to every child's environment): as another user it cannot write its records, and the
      // error in its exit hook kept the workers from exiting.
      ['-n', 'sh', '-c', 'ip link set lo up && exec env -u NODE_OPTIONS "$@"', 'sh',
        'setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--no-new-privs',
        ...(caps ? ['--inh-caps=+net_bind_service', '--ambient-caps=+net_bind_service', '--bounding-set=-all,+net_bind_service'] : ['--bounding-set=-all']),
        bin, 'serve', '--state', svcState, '--listen', '127.0.0.1:443'],
      { env },
    );
  const denied = asService(false);
  let deniedErr = '';
  denied.stderr.on('data', (d: Buffer) => (deniedErr += d.toString('utf8')));
  const [deniedCode] = (await Promise.race([once(denied, 'exit'), deadline(30_000, 'the start without the capability')])) as [number | null];
  t.not(deniedCode, 0, 'without CAP_NET_BIND_SERVICE, port 443 is refused');
  t.match(deniedErr, /EACCES|permission denied/i);
  const svc = await serve(t, asService(true));
  t.match(svc.stderr(), 'serving on https://127.0.0.1:443/', 'with it alone, an unprivileged user serves 443');
  svc.child.kill('SIGTERM');
  await Promise.race([once(svc.child, 'exit'), deadline(15_000, 'exit after SIGTERM')]);
});

const NOBODY = 65534;

/** Wait for `child` (oneport serve) to say "serving on"; it is killed at teardown. */
async function serve(t: { teardown(fn: () => unknown): void }, child: ChildProcessWithoutNullStreams | ChildProcessByStdio<null, null, Readable>): Promise<{ child: ChildProcess; stderr: () => string }> {
  child.on('error', () => {});
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  const serving = new Promise<void>((resolve) =>
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString('utf8');
      if (stderr.includes('serving on')) resolve();
    }),
  );
  await Promise.race([serving, once(child, 'exit').then(() => Promise.reject(new Error(`oneport serve exited: ${stderr}`))), deadline(30_000, 'oneport serve')]);
  return { child, stderr: () => stderr };
}
