/**
 * Regression tests for the security review (issue 10), points 4, 6 and 9 and the small items
 * around them: login budgets that hold under concurrency and cannot lock a user out, resume tokens
 * that die with the session that minted them (also after a restart, embedded or Redis store), a
 * state folder that is never chmodded, the `__Host-` session cookie, a ticket issuance budget,
 * IPv6 budgets per /64, and `oneport user add --password-stdin`. Each fails without its fix.
 * Real gateway, real sockets on loopback, a real redis-server.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { OneportError } from '../../gateway/errors.js';
import { verifyPassword } from '../../gateway/auth/passwords.js';
import { RedisAuthStore } from '../../gateway/auth/redis-store.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { rawRequest, readResponse, startBackend, type RawConnectResult } from '../helpers/net.js';
import { startRedis } from '../helpers/redis.js';
import { setupDesk } from '../helpers/scenario.js';

function errorCode(body: string): string | undefined {
  try {
    return (JSON.parse(body) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

function post(path: string, body: unknown, headers: Record<string, string> = {}): string {
  const text = JSON.stringify(body);
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `POST ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n${extra}Connection: close\r\n\r\n${text}`;
}

const get = (path: string, token: string): string => `GET ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`;

/** A whole response (head and body), the connection closed. */
async function call(gw: TestGateway, request: string, localAddress?: string): Promise<RawConnectResult & { json: any }> {
  const r = await rawRequest(gw.port, request, { ca: gw.caCert, ...(localAddress ? { localAddress } : {}) });
  let text = r.body;
  if (r.status >= 200 && r.status < 300) {
    const chunks: Buffer[] = [r.rest];
    r.socket.resume();
    for await (const c of r.socket) chunks.push(c as Buffer);
    text = Buffer.concat(chunks).toString('utf8');
  }
  r.socket.destroy();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { ...r, body: text, json };
}

async function login(gw: TestGateway, user: string, password: string, localAddress?: string): Promise<{ token: string; cookie: string; head: string }> {
  const r = await call(gw, post('/api/login', { user, password }), localAddress);
  if (r.status !== 200) throw new Error(`login failed: ${r.status} ${r.body}`);
  const cookie = /\r\nSet-Cookie: ([^;\r]+)/i.exec(r.head)?.[1] ?? '';
  return { token: (r.json as { token: string }).token, cookie, head: r.head };
}

async function apiTicket(gw: TestGateway, token: string, vm = 'desk'): Promise<{ ticket: string; resume: string; connectWithTicket: string }> {
  const r = await call(gw, post(`/api/desktops/${vm}/tickets`, { protocol: 'vnc' }, { Authorization: `Bearer ${token}` }));
  if (r.status !== 200) throw new Error(`ticket failed: ${r.status} ${r.body}`);
  return r.json as { ticket: string; resume: string; connectWithTicket: string };
}

/** A tunnel over TLS with a resume token as its credential; the status (200, or the refusal). */
async function resumeTunnel(gw: TestGateway, resume: string, localAddress?: string): Promise<{ status: number; code: string | undefined }> {
  const r = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${resume}\r\n\r\n`, { ca: gw.caCert, ...(localAddress ? { localAddress } : {}) });
  r.socket.destroy();
  return { status: r.status, code: errorCode(r.body) };
}

/**
 * `requests` sent at the same moment on connections that are already open (TLS done), so they
 * reach the gateway together and race; the answers, in order.
 */
async function simultaneously(gw: TestGateway, requests: Array<{ request: string; localAddress?: string }>): Promise<RawConnectResult[]> {
  const sockets = requests.map(({ localAddress }) => {
    const s = tls.connect({ port: gw.port, host: '127.0.0.1', ca: gw.caCert, servername: 'localhost', ...(localAddress ? { localAddress } : {}) });
    s.on('error', () => {});
    return s;
  });
  await Promise.all(sockets.map((s) => once(s, 'secureConnect')));
  const answers = sockets.map((s) => readResponse(s, 30_000));
  sockets.forEach((s, i) => s.write(requests[i]!.request));
  const results = await Promise.all(answers);
  for (const s of sockets) s.destroy();
  return results;
}

async function passwordFailures(gw: TestGateway): Promise<number> {
  return (await gw.ctx.metrics.authFailures.get()).values.find((v) => v.labels.kind === 'password')?.value ?? 0;
}

// -------------------------------------------------------------------------------------------
// Point 4: login budgets under concurrency, and no lockout switch

t.test('4: 30 parallel guesses for one user: at most the budget is hashed; the real user still logs in from elsewhere', async (t) => {
  // The hashing gate set wide open: here only the reservation before hashing may refuse.
  const { gw } = await setupDesk(t, { limits: { loginsPerUserPerMinute: 10, loginsPerAddressPerMinute: 1000, concurrentHashesPerAddress: 100, concurrentHashes: 100 } });
  const guesses = Array.from({ length: 30 }, (_, i) => ({ request: post('/api/login', { user: 'alice', password: `wrong-guess-${i}` }), localAddress: '127.0.0.5' }));
  const answers = await simultaneously(gw, guesses);
  const statuses = answers.map((a) => a.status);
  const evaluated = statuses.filter((s) => s === 401).length;
  t.equal(evaluated, 10, 'exactly the budget of 10 guesses was evaluated');
  t.equal(statuses.filter((s) => s === 429).length, 30 - evaluated, 'every other guess got 429');
  t.ok(answers.filter((a) => a.status === 429).every((a) => /\r\nRetry-After: [1-9]\d*/i.test(a.head) && errorCode(a.body) === 'ONEPORT_ERR_RATE_LIMITED'), 'each 429 is ONEPORT_ERR_RATE_LIMITED with Retry-After');
  t.equal(await passwordFailures(gw), 10, 'and 10 password hashes failed');

  const real = await call(gw, post('/api/login', { user: 'alice', password: 'alice-password-1' }), '127.0.0.6');
  t.equal(real.status, 200, "the user's right password from another address is not locked out");
  t.notOk(gw.logText().includes('wrong-guess-'), 'guesses never reach the logs');
});

t.test('4: password hashing is bounded per address and in total (429 + Retry-After beyond)', async (t) => {
  const { gw } = await setupDesk(t, {
    limits: { concurrentHashesPerAddress: 2, concurrentHashes: 3, loginsPerUserPerMinute: 100, loginsPerAddressPerMinute: 100 },
  });
  // Different (unknown) users, so only the concurrency bound can refuse them.
  const oneAddress = await simultaneously(gw, Array.from({ length: 10 }, (_, i) => ({ request: post('/api/login', { user: `nobody${i}`, password: 'x' }), localAddress: '127.0.0.7' })));
  const refused = oneAddress.filter((a) => a.status === 429);
  t.ok(refused.length >= 1, `one address, 10 at once with a bound of 2: ${refused.length} got 429`);
  t.ok(refused.every((a) => /\r\nRetry-After: [1-9]\d*/i.test(a.head) && errorCode(a.body) === 'ONEPORT_ERR_RATE_LIMITED'), 'as ONEPORT_ERR_RATE_LIMITED with Retry-After');
  t.equal(oneAddress.filter((a) => a.status === 401).length + refused.length, 10, 'the rest were evaluated (401)');

  const spread = await simultaneously(gw, Array.from({ length: 10 }, (_, i) => ({ request: post('/api/login', { user: `other${i}`, password: 'x' }), localAddress: `127.0.1.${10 + i}` })));
  t.ok(spread.filter((a) => a.status === 429).length >= 1, 'ten addresses, one each, with a total bound of 3: some got 429');

  const after = await call(gw, post('/api/login', { user: 'alice', password: 'alice-password-1' }), '127.0.0.7');
  t.equal(after.status, 200, 'once the burst is over, the same address logs in (the refusals did not count as failures)');
});

t.test('4 + IPv6: address budgets are shared by a whole /64', async (t) => {
  const { gw } = await setupDesk(t, { limits: { loginsPerAddressPerMinute: 2, loginsPerUserPerMinute: 100 } });
  const attempt = (client: string): Promise<string> =>
    gw.ctx.auth.password('nobody', 'x', client).then(
      () => 'ok',
      (e: unknown) => (e instanceof OneportError ? e.code : String(e)),
    );
  t.equal(await attempt('2001:db8:1:2::1'), 'ONEPORT_ERR_BAD_CREDENTIALS');
  t.equal(await attempt('2001:db8:1:2:ffff::9'), 'ONEPORT_ERR_BAD_CREDENTIALS');
  t.equal(await attempt('2001:0db8:0001:0002:abcd::1'), 'ONEPORT_ERR_RATE_LIMITED', 'a third address in the same /64 shares its budget');
  t.equal(await attempt('2001:db8:1:3::1'), 'ONEPORT_ERR_BAD_CREDENTIALS', 'the next /64 has its own');
  t.equal(await attempt('192.0.2.1'), 'ONEPORT_ERR_BAD_CREDENTIALS', 'IPv4 addresses are still counted one by one');
  t.equal(await attempt('192.0.2.2'), 'ONEPORT_ERR_BAD_CREDENTIALS');
});

// -------------------------------------------------------------------------------------------
// Point 6: resume tokens die with their session; revocations survive a restart

t.test('6: logout kills the resume tokens and unused tickets the session minted, from any address', async (t) => {
  const { gw } = await setupDesk(t);
  const s1 = await login(gw, 'alice', 'alice-password-1');
  const s2 = await login(gw, 'alice', 'alice-password-1');
  const a = await apiTicket(gw, s1.token);
  const unused = await apiTicket(gw, s1.token);
  const b = await apiTicket(gw, s2.token);
  const byAdmin = await gw.ticket('alice', 'desk');
  t.equal((await resumeTunnel(gw, a.resume)).status, 200, 'before logout the resume token opens a tunnel');

  t.equal((await call(gw, post('/api/logout', {}, { Authorization: `Bearer ${s1.token}` }))).status, 200, 'logout');
  for (const from of [undefined, '127.0.0.8']) {
    const r = await resumeTunnel(gw, a.resume, from);
    t.equal(r.status, 407, `after logout the resume token is refused (from ${from ?? '127.0.0.1'})`);
    t.equal(r.code, 'ONEPORT_ERR_SESSION_INVALID');
  }
  const ticket = await rawRequest(gw.port, `CONNECT ${unused.connectWithTicket} HTTP/1.1\r\n\r\n`);
  ticket.socket.destroy();
  t.equal(ticket.status, 407, 'a ticket the session minted and never used is dead too');
  t.equal((await resumeTunnel(gw, b.resume)).status, 200, "another session's resume token is untouched");
  t.equal((await resumeTunnel(gw, byAdmin.resume)).status, 200, 'a ticket issued without a session (admin, CLI) keeps its resume token: it has no session to end');
  t.notOk(gw.logText().includes(a.resume), 'resume tokens never reach the logs');
});

t.test('6: a password change kills resume tokens minted before it', async (t) => {
  const { gw } = await setupDesk(t);
  const s = await login(gw, 'alice', 'alice-password-1');
  const a = await apiTicket(gw, s.token);
  const alice = gw.ctx.dir.getUser('alice')!;
  await gw.ctx.dir.putUser({ ...alice, sessionsNotBefore: Date.now() + 1 });
  t.equal((await resumeTunnel(gw, a.resume)).status, 407);
});

async function restartOnSameState(t: Test, store?: () => Promise<RedisAuthStore>): Promise<void> {
  const state = mkdtempSync(join(tmpdir(), 'oneport-restart-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const echo = await startBackend(t);
  const first = await startTestGateway(t, {}, { state, ...(store ? { store: await store() } : {}) });
  await first.addUser('alice', 'alice-password-1');
  await first.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], ['alice']);
  const out = await login(first, 'alice', 'alice-password-1');
  const kept = await login(first, 'alice', 'alice-password-1');
  const a = await apiTicket(first, out.token);
  const k = await apiTicket(first, kept.token);
  t.equal((await call(first, post('/api/logout', {}, { Authorization: `Bearer ${out.token}` }))).status, 200, 'logout');
  await first.close({ drainMs: 0 });
  if (!store) {
    const file = join(state, 'revoked-sessions.json');
    t.equal(statSync(file).mode & 0o777, 0o600, 'the revocations file is private');
    const text = readFileSync(file, 'utf8');
    t.notOk(text.includes(out.token) || text.includes(a.resume), 'it holds session ids, never tokens');
  }

  const second = await startTestGateway(t, {}, { state, ...(store ? { store: await store() } : {}) });
  t.equal((await call(second, get('/api/desktops', out.token))).status, 401, 'after a restart the logged-out session token is still refused');
  const r = await resumeTunnel(second, a.resume);
  t.equal(r.status, 407, 'and so is its resume token');
  t.equal((await call(second, get('/api/desktops', kept.token))).status, 200, 'a session that was not logged out still works');
  t.equal((await resumeTunnel(second, k.resume)).status, 200, 'and so does its resume token');
}

t.test('6: revocations survive a restart (embedded store: a file in the state folder)', async (t) => {
  await restartOnSameState(t);
});

t.test('6: revocations survive a restart (Redis store) and the resume check consults Redis', async (t) => {
  const redis = await startRedis(t);
  await restartOnSameState(t, () => RedisAuthStore.open({ redis: redis.url, prefix: 'test:auth:' }));
});

t.test('6: while Redis is away, resume tokens keep working (DECISIONS 2026-12-03)', async (t) => {
  const redis = await startRedis(t);
  const echo = await startBackend(t);
  const viaRedis = await startTestGateway(t, {}, { store: await RedisAuthStore.open({ redis: redis.url, prefix: 'test:auth:' }) });
  await viaRedis.addUser('alice', 'alice-password-1');
  await viaRedis.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], ['alice']);
  const s = await login(viaRedis, 'alice', 'alice-password-1');
  const a = await apiTicket(viaRedis, s.token);
  await redis.kill();
  t.equal((await resumeTunnel(viaRedis, a.resume)).status, 200, 'the revocation check comes from the node\'s copy: the resume token is accepted');
  // Issue 15: revocation checks come from the node's copy, so signed-in API calls do not need Redis.
  t.equal((await call(viaRedis, get('/api/desktops', s.token))).status, 200, 'a signed-in API call works while Redis is away');
  t.equal((await call(viaRedis, post('/api/desktops/desk/tickets', { protocol: 'vnc' }, { Authorization: `Bearer ${s.token}` }))).status, 503, 'a new ticket cannot be made single-use without Redis: 503');
});

// -------------------------------------------------------------------------------------------
// Small items: __Host- cookie, ticket budget

t.test('session cookie: __Host- prefix (Secure, Path=/, no Domain), and it authenticates', async (t) => {
  const { gw } = await setupDesk(t);
  const s = await login(gw, 'alice', 'alice-password-1');
  const set = /\r\nSet-Cookie: (__Host-oneport_session=[^\r]*)/i.exec(s.head)?.[1];
  t.ok(set, 'the session cookie is __Host-oneport_session');
  t.match(set, /; Secure/);
  t.match(set, /; Path=\/(;|$)/);
  t.notMatch(set, /Domain=/i);
  const r = await call(gw, `GET /api/desktops HTTP/1.1\r\nHost: localhost\r\nCookie: ${s.cookie}\r\nConnection: close\r\n\r\n`);
  t.equal(r.status, 200, 'the cookie authenticates API calls');
  const out = await call(gw, post('/api/logout', {}, { Cookie: s.cookie }));
  t.match(out.head, /\r\nSet-Cookie: __Host-oneport_session=; [^\r]*Max-Age=0/i, 'logout clears it');
});

t.test('limits.ticketsPerUserPerMinute: one user asking for too many tickets gets 429', async (t) => {
  const { gw, echo } = await setupDesk(t, { limits: { ticketsPerUserPerMinute: 3 } });
  await gw.addVm('sdesk', [{ protocol: 'spice', host: '127.0.0.1', port: echo.port }], ['alice']);
  const s = await login(gw, 'alice', 'alice-password-1');
  for (let i = 1; i <= 3; i++) t.ok((await apiTicket(gw, s.token)).ticket, `ticket ${i}`);
  const fourth = await call(gw, post('/api/desktops/desk/tickets', { protocol: 'vnc' }, { Authorization: `Bearer ${s.token}` }));
  t.equal(fourth.status, 429, 'the fourth in a minute: 429');
  t.match(fourth.head, /\r\nRetry-After: [1-9]\d*/i);
  t.equal(errorCode(fourth.body), 'ONEPORT_ERR_RATE_LIMITED');
  const vv = await call(gw, `GET /api/desktops/sdesk/console.vv?protocol=spice HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${s.token}\r\nConnection: close\r\n\r\n`);
  t.equal(vv.status, 429, 'a console.vv file carries a ticket too: same budget');
  t.ok((await gw.ticket('alice', 'desk')).ticket, 'tickets issued without a session (admin API, CLI) are not counted');
});

// -------------------------------------------------------------------------------------------
// Point 9 and --password-stdin, as a user runs the command

const CLI = fileURLToPath(new URL('../../gateway/cli.ts', import.meta.url));

async function runCli(args: string[], stdin?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  p.stdin.end(stdin ?? '');
  const [code] = (await once(p, 'close')) as [number | null];
  return { code, stdout, stderr };
}

t.test('9: --state on an unsafe existing folder is refused and left as it was; a new one is created 0700', async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'oneport-state-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  const shared = join(base, 'shared');
  mkdirSync(shared);
  chmodSync(shared, 0o1777);
  const r = await runCli(['init', '--state', shared]);
  t.equal(r.code, 1, 'init exits 1');
  t.match(r.stderr, /state folder .*shared.* (group|world)-writable/i, `a clear message: ${r.stderr.trim()}`);
  t.equal(statSync(shared).mode & 0o7777, 0o1777, 'the folder was not chmodded');

  const fresh = join(base, 'new', 'state');
  const ok = await runCli(['init', '--state', fresh]);
  t.equal(ok.code, 0, ok.stderr);
  t.equal(statSync(fresh).mode & 0o777, 0o700, 'a new folder is created 0700');
});

t.test('user add --password-stdin: the password is read from stdin, not argv', async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-cli-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const r = await runCli(['user', 'add', 'bob', '--password-stdin', '--state', state], 'bob-password-from-stdin\n');
  t.equal(r.code, 0, r.stderr);
  t.notOk(r.stdout.includes('bob-password-from-stdin'), 'the password is not echoed');
  const dir = JSON.parse(readFileSync(join(state, 'directory.json'), 'utf8')) as { users: Array<{ name: string; passwordHash: string }> };
  const bob = dir.users.find((u) => u.name === 'bob');
  t.ok(bob && (await verifyPassword('bob-password-from-stdin', bob.passwordHash)), 'the stored hash is of the line read (without its newline)');
  const both = await runCli(['user', 'add', 'bob', '--password', 'x', '--password-stdin', '--state', state], 'y\n');
  t.equal(both.code, 1, '--password and --password-stdin together are refused');
  const empty = await runCli(['user', 'add', 'carol', '--password-stdin', '--state', state], '');
  t.equal(empty.code, 1, 'nothing on stdin: refused');
  t.match(empty.stderr, /no password on standard input/);
  const help = await runCli(['user', 'add', '--help']);
  t.match(help.stdout, /visible\s+to\s+other\s+local\s+users/i, 'help warns that --password is visible');
});
