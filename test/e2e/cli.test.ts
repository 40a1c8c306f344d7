/**
 * The `oneport` command as a user runs it: `serve` in a child process (demo password printed
 * once, HTTPS with its own CA, SIGTERM exits cleanly), `init`, and `user`/`vm`/`ticket`/`session`
 * through the running gateway's control socket, or on the directory file when it is stopped.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { apiClient } from '../helpers/api.js';
import { type RawConnectResult, closedWithin, rawRequest } from '../helpers/net.js';

// About forty CLI runs and five gateways, each a fresh Node process, and one build (npm start):
// past the usual 180 s per file on two shared cores at load 10-11.
t.setTimeout(420_000);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'gateway', 'cli.ts');

function oneport(args: string[], env: Record<string, string> = {}, stdin: 'ignore' | 'pipe' = 'ignore'): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: [stdin, 'pipe', 'pipe'],
  });
}

/** Run a command to its end; `input`, when given, is its standard input. */
async function runCli(args: string[], env: Record<string, string> = {}, input?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = oneport(args, env, input === undefined ? 'ignore' : 'pipe');
  if (input !== undefined) p.stdin!.end(input);
  let stdout = '';
  let stderr = '';
  p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => p.on('close', resolve));
  return { code, stdout, stderr };
}

interface Served {
  proc: ChildProcess;
  port: number;
  stderr: () => string;
  stdout: () => string;
  exited: Promise<number | null>;
}

/** Start `oneport serve` and wait for its "serving on" line. */
async function serve(t: { teardown(f: () => unknown): void }, state: string, extra: string[] = []): Promise<Served> {
  const proc = oneport(['serve', '--listen', '127.0.0.1:0', '--state', state, ...extra]);
  let err = '';
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('close', resolve));
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000);
    proc.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /serving on https:\/\/[^:]+:(\d+)\//.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    void exited.then((code) => reject(new Error(`serve exited with ${code}: ${err}`)));
  });
  return { proc, port, stderr: () => err, stdout: () => out, exited };
}

t.test('serve: first start makes a CA and the demo user, prints its password once; SIGTERM exits 0', async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const first = await serve(t, state, ['--demo']);
  const password = /password "([^"]+)"/.exec(first.stderr())?.[1];
  t.ok(password, 'the demo password is printed');
  for (const f of ['ca.pem', 'ca-key.pem', 'server.pem', 'server-key.pem', 'directory.json', 'control.sock']) t.ok(existsSync(join(state, f)), f);
  const ca = readFileSync(join(state, 'ca.pem'), 'utf8');
  const api = apiClient(t, { port: first.port, caCert: ca });
  t.equal((await api('GET', '/healthz')).status, 200, 'HTTPS verified against the CA it made');
  const login = await api('POST', '/api/login', { body: { user: 'demo', password } });
  t.equal(login.status, 200, 'the printed password logs in');
  const desktops = await api('GET', '/api/desktops', { token: login.body.token });
  t.same(desktops.body.map((d: { vm: string }) => d.vm), ['demo']);
  t.notOk(first.stdout().includes(password!), 'the password is not in the JSON logs');

  // The CLI goes through the running gateway.
  const add = await runCli(['--state', state, 'user', 'add', 'bob', '--password', 'bob-password-1']);
  t.equal(add.code, 0, add.stderr);
  const addVm = await runCli(['--state', state, 'vm', 'add', 'bobs', '--vnc', '127.0.0.1:5999@5901', '--users', 'bob']);
  t.equal(addVm.code, 0, addVm.stderr);
  const bob = await api('POST', '/api/login', { body: { user: 'bob', password: 'bob-password-1' } });
  t.equal(bob.status, 200, 'a user added by the CLI can log in at once');
  t.same((await api('GET', '/api/desktops', { token: bob.body.token })).body.map((d: { vm: string }) => d.vm), ['bobs']);
  const ticket = await runCli(['--state', state, 'ticket', 'demo', '--user', 'demo']);
  t.equal(ticket.code, 0, ticket.stderr);
  t.match(JSON.parse(ticket.stdout), { ticket: /^[a-z2-7]{50}$/, connect: 'demo:5900' });
  const status = await runCli(['--state', state, 'cluster', 'status', '--json']);
  t.match(JSON.parse(status.stdout), { leader: { epoch: 1 } });
  const table = await runCli(['--state', state, 'cluster', 'status']);
  t.match(table.stdout, /leader: \S+ \(epoch 1\)/, 'and a readable summary without --json');

  first.proc.kill('SIGTERM');
  t.equal(await first.exited, 0, 'SIGTERM: clean exit');

  // Stopped: the CLI edits the file; the next start keeps users and prints no password.
  const list = await runCli(['--state', state, 'user', 'list']);
  t.match(list.stdout, 'bob');
  const second = await serve(t, state, ['--demo']);
  t.notMatch(second.stderr(), /password "/, 'no password printed when the demo user exists');
  const api2 = apiClient(t, { port: second.port, caCert: ca });
  t.equal((await api2('POST', '/api/login', { body: { user: 'bob', password: 'bob-password-1' } })).status, 200, 'state survived the restart');
  second.proc.kill('SIGTERM');
  t.equal(await second.exited, 0);
});

t.test('serve without --demo (a node not started by npm start) serves no demo desktop or user', async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const node = await serve(t, state);
  t.notMatch(node.stderr(), /password "/, 'no demo password printed');
  const ca = readFileSync(join(state, 'ca.pem'), 'utf8');
  const api = apiClient(t, { port: node.port, caCert: ca });
  t.equal((await api('POST', '/api/login', { body: { user: 'demo', password: 'anything-at-all' } })).status, 401, 'no demo user');
  const list = await runCli(['--state', state, 'vm', 'list']);
  t.notMatch(list.stdout, /\bdemo\b/, 'no demo VM');
  node.proc.kill('SIGTERM');
  t.equal(await node.exited, 0);
});

t.test('init, ticket without a gateway, bad config', async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const init = await runCli(['--state', state, 'init']);
  t.equal(init.code, 0, init.stderr);
  t.match(init.stdout, 'created cluster CA');
  t.ok(existsSync(join(state, 'directory.json')));
  const again = await runCli(['--state', state, 'init']);
  t.notMatch(again.stdout, 'created cluster CA', 'init is idempotent');
  const ticket = await runCli(['--state', state, 'ticket', 'demo', '--user', 'demo']);
  t.equal(ticket.code, 1);
  t.match(ticket.stderr, 'running gateway');
  const cfg = join(state, 'bad.json');
  writeFileSync(cfg, JSON.stringify({ listen: 'nowhere', tls: { minVersion: 'SSLv3' } }));
  const bad = await runCli(['--config', cfg, 'serve']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /listen: must be host:port/);
  t.match(bad.stderr, /tls\.minVersion/);
  // A stopped cluster node: its directory is in Redis, so nothing is "saved" into a file no one reads.
  const clusterCfg = join(state, 'cluster.json');
  writeFileSync(clusterCfg, JSON.stringify({ state, cluster: { redis: 'redis://127.0.0.1:1' } }));
  const offline = await runCli(['--config', clusterCfg, 'user', 'add', 'carol', '--password', 'carol-password-1']);
  t.equal(offline.code, 1, 'user add on a stopped cluster node is refused');
  t.match(offline.stderr, /belongs to a cluster/);
  t.notMatch(readFileSync(join(state, 'directory.json'), 'utf8'), 'carol', 'and nothing was written');
  const badVm = await runCli(['--state', state, 'vm', 'add', '10.0.0.1', '--vnc', '127.0.0.1:5900']);
  t.equal(badVm.code, 1, 'VM names cannot be addresses');
});

t.test('npm start path: the built CLI serves the portal and the API', async (t) => {
  const build = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const p = spawn('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('close', (code) => resolve({ code, out }));
  });
  t.equal(build.code, 0, build.out);
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const proc = spawn(process.execPath, [join(ROOT, 'dist', 'gateway', 'cli.js'), 'serve', '--listen', '127.0.0.1:0', '--state', state], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  t.teardown(() => proc.kill('SIGKILL'));
  const port = await new Promise<number>((resolve, reject) => {
    let err = '';
    proc.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /serving on https:\/\/[^:]+:(\d+)\//.exec(err);
      if (m) resolve(Number(m[1]));
    });
    proc.on('close', (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
  const ca = readFileSync(join(state, 'ca.pem'), 'utf8');
  const dispatcher = new Agent({ connect: { ca } });
  t.teardown(() => dispatcher.close());
  const r = await request(`https://localhost:${port}/`, { dispatcher });
  t.equal(r.statusCode, 200);
  t.match(await r.body.text(), '<title>oneport</title>', 'the portal is found from dist/');
  const novnc = await request(`https://localhost:${port}/vendor/novnc/core/rfb.js`, { dispatcher });
  t.equal(novnc.statusCode, 200, 'noVNC is found in node_modules from dist/');
  await novnc.body.dump();
  const exited = new Promise((resolve) => proc.on('close', resolve));
  proc.kill('SIGTERM');
  t.equal(await exited, 0);
});

t.test('session list and kill, user limits, and the audit file, through the running gateway', async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const served = await serve(t, state, ['--demo']);
  const ca = readFileSync(join(state, 'ca.pem'), 'utf8');
  const none = await runCli(['--state', state, 'session', 'list']);
  t.equal(none.code, 0, none.stderr);
  t.match(none.stdout, 'no live sessions');

  // Two CONNECT tunnels to the demo desktop, with tickets from the CLI.
  const open = async (): Promise<RawConnectResult> => {
    const issued = JSON.parse((await runCli(['--state', state, 'ticket', 'demo', '--user', 'demo'])).stdout) as { ticket: string };
    const r = await rawRequest(served.port, `CONNECT ${issued.ticket}.demo:5900 HTTP/1.1\r\n\r\n`, { ca });
    t.equal(r.status, 200);
    r.socket.on('error', () => {});
    return r;
  };
  const first = await open();
  const second = await open();
  const json = await runCli(['--state', state, 'session', 'list', '--json']);
  t.equal(json.code, 0, json.stderr);
  const list = JSON.parse(json.stdout) as { sessions: Array<{ id: string; user: string; vm: string }>; complete: boolean };
  t.equal(list.sessions.length, 2);
  t.match(list.sessions[0], { id: /:\d+$/, user: 'demo', vm: 'demo', protocol: 'vnc', transport: 'connect-tls' });
  t.equal(list.complete, true);
  const table = await runCli(['--state', state, 'session', 'list']);
  t.match(table.stdout, list.sessions[0]!.id, 'a readable table without --json');

  const kill = await runCli(['--state', state, 'session', 'kill', list.sessions[0]!.id]);
  t.equal(kill.code, 0, kill.stderr);
  t.match(kill.stdout, 'ended');
  await closedWithin(first.socket, 5000);
  t.pass('that tunnel is closed');
  const byUser = await runCli(['--state', state, 'session', 'kill', '--user', 'demo']);
  t.equal(byUser.code, 0, byUser.stderr);
  t.match(byUser.stdout, '1 tunnel(s) of demo ended');
  await closedWithin(second.socket, 5000);
  const unknown = await runCli(['--state', state, 'session', 'kill', 'nope:1']);
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, 'no such session');
  const neither = await runCli(['--state', state, 'session', 'kill']);
  t.equal(neither.code, 1, 'an id or --user is needed');

  const limit = await runCli(['--state', state, 'user', 'set', 'demo', '--max-sessions', '1']);
  t.equal(limit.code, 0, limit.stderr);
  t.match((await runCli(['--state', state, 'user', 'list'])).stdout, /demo.*1/);

  served.proc.kill('SIGTERM');
  t.equal(await served.exited, 0);
  const audit = readFileSync(join(state, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(audit.filter((r) => r.kind === 'session').length, 2, 'both sessions audited');
  t.ok(audit.some((r) => r.kind === 'admin' && r.action === 'session.terminate' && r.actor === 'local-admin' && r.via === 'control-socket'), 'the kill, by the machine\'s administrator');
  t.ok(audit.some((r) => r.kind === 'admin' && r.action === 'user.update' && (r.details as { fields: string[] }).fields.includes('maxSessions')), 'the limit change');
  t.ok(audit.some((r) => r.kind === 'admin' && r.action === 'ticket.issue'), 'the CLI\'s tickets');
});

t.test('vm password: from a file or standard input, never argv; shown as set, never printed; cleared', async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  t.equal((await runCli(['--state', state, 'init'])).code, 0);
  t.equal((await runCli(['--state', state, 'vm', 'add', 'desk', '--vnc', '127.0.0.1:5999', '--spice', '127.0.0.1:5998@5901'])).code, 0);
  const file = join(state, 'vnc-password');
  writeFileSync(file, 'from-a-file\n', { mode: 0o600 });
  // Stopped: the directory file.
  const fromFile = await runCli(['--state', state, 'vm', 'password', 'desk', '--protocol', 'vnc', '--password-file', file]);
  t.equal(fromFile.code, 0, fromFile.stderr);
  const stored = JSON.parse(readFileSync(join(state, 'directory.json'), 'utf8')) as { vms: Array<{ endpoints: Array<{ protocol: string; password?: string }> }> };
  t.equal(stored.vms[0]?.endpoints.find((e) => e.protocol === 'vnc')?.password, 'from-a-file', 'in the directory file (mode 0600), without the newline');
  const none = await runCli(['--state', state, 'vm', 'password', 'desk', '--protocol', 'vnc']);
  t.equal(none.code, 1, 'no source: refused');
  t.match(none.stderr, /exactly one of --password-file, --password-stdin, --clear/);
  const argv = await runCli(['--state', state, 'vm', 'password', 'desk', '--protocol', 'vnc', '--password', 'x']);
  t.equal(argv.code, 1, 'there is no --password on the command line');

  // Running: through the control socket and the API.
  const node = await serve(t, state);
  const stdin = await runCli(['--state', state, 'vm', 'password', 'desk', '--protocol', 'spice', '--password-stdin'], {}, 'from-stdin\n');
  t.equal(stdin.code, 0, stdin.stderr);
  t.match(stdin.stdout, 'spice console password set');
  const list = await runCli(['--state', state, 'vm', 'list']);
  t.match(list.stdout, /vnc 127\.0\.0\.1:5999 \(published 5900, console password set\)/);
  t.match(list.stdout, /spice 127\.0\.0\.1:5998 \(published 5901, console password set\)/);
  t.notMatch(list.stdout, /from-a-file|from-stdin/, 'never printed');
  const rdp = await runCli(['--state', state, 'vm', 'password', 'desk', '--protocol', 'rdp', '--clear']);
  t.equal(rdp.code, 1, 'rdp: not a choice');
  t.equal((await runCli(['--state', state, 'vm', 'password', 'desk', '--protocol', 'vnc', '--clear'])).code, 0);
  t.match((await runCli(['--state', state, 'vm', 'list'])).stdout, /vnc 127\.0\.0\.1:5999 \(published 5900\)/, 'cleared');
  t.notMatch(node.stdout() + node.stderr(), /from-a-file|from-stdin/, 'not in the gateway\'s logs');
  const audit = readFileSync(join(state, 'audit.log'), 'utf8');
  t.match(audit, /vm\.console-password/, 'audited');
  t.notMatch(audit, /from-a-file|from-stdin/, 'without the password');
  node.proc.kill('SIGTERM');
  t.equal(await node.exited, 0);
  const saved = readFileSync(join(state, 'directory.json'), 'utf8');
  t.match(saved, /"password": "from-stdin"/, 'the running gateway saved the spice one');
  t.notMatch(saved, /from-a-file/, 'and the cleared one is gone');
});
