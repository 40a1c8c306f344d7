/**
 * Session controls (security issue) against a real gateway on loopback: the VM's idle timeout and
 * maximum session time (with per-group overrides), the session caps on one node, the admin
 * session list and terminate calls, and the audit file.
 */
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { existsSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type net from 'node:net';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { WebSocket } from 'ws';
import type { TestGateway } from '../helpers/gateway.js';
import { setupDesk } from '../helpers/scenario.js';
import { basic, closedWithin, echoRoundTrip, rawRequest } from '../helpers/net.js';
import { until } from '../helpers/wait.js';

interface Closed {
  code: number;
  reason: string;
}

/** A WebSocket tunnel to `vm` with a fresh ticket for `user`, open and echoing. */
async function wsTunnel(t: Test, gw: TestGateway, user = 'alice', vm = 'desk', protocols = ['binary']): Promise<{ ws: WebSocket; closed: Promise<Closed>; resume: string }> {
  const { ticket, resume } = await gw.ticket(user, vm);
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/${vm}/vnc?ticket=${ticket}`, protocols, { ca: gw.caCert });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  const closed = new Promise<Closed>((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
  await once(ws, 'open');
  if (protocols[0] === 'binary') {
    const echoed = once(ws, 'message');
    ws.send(Buffer.from('hi'));
    await echoed;
  }
  return { ws, closed, resume };
}

/** A CONNECT tunnel (TLS) to `vm` with a fresh ticket for `user`, open. */
async function connectTunnel(gw: TestGateway, user = 'alice', vm = 'desk'): Promise<{ status: number; socket: net.Socket; head: string; body: string }> {
  const { ticket } = await gw.ticket(user, vm);
  const r = await rawRequest(gw.port, `CONNECT ${vm}:5900 HTTP/1.1\r\nProxy-Authorization: ${basic(user, ticket)}\r\n\r\n`, { ca: gw.caCert });
  r.socket.on('error', () => {});
  return { status: r.status, socket: r.socket as net.Socket, head: r.head, body: r.body };
}

async function setPolicy(gw: TestGateway, extra: Record<string, unknown>): Promise<void> {
  await gw.ctx.dir.putVm({ ...gw.ctx.dir.getVm('desk')!, ...extra });
}

t.test('idle timeout per VM, with a per-group override', async (t) => {
  const { gw } = await setupDesk(t);
  await gw.addUser('bob', 'bob-password-1', { groups: ['long'] });
  // tunnel.idleTimeoutMs is 1 h: the VM's 300 ms wins for alice; bob's group turns it off.
  await setPolicy(gw, { users: ['alice', 'bob'], policy: { idleTimeoutMs: 300, groups: { long: { idleTimeoutMs: 0 } } } });
  const bob = await connectTunnel(gw, 'bob');
  const alice = await connectTunnel(gw, 'alice');
  t.equal(bob.status, 200);
  t.equal(alice.status, 200);
  const { elapsedMs } = await closedWithin(alice.socket, 5000);
  t.ok(elapsedMs >= 250, `alice's idle tunnel closed after ${elapsedMs} ms`);
  await until(() => gw.logs.some((l) => l.event === 'tunnel' && l.user === 'alice'));
  t.match(gw.logs.find((l) => l.event === 'tunnel' && l.user === 'alice'), { closeReason: 'idle' });
  t.notOk(bob.socket.destroyed, 'bob\'s tunnel, idle longer, is still open');
  t.same(await echoRoundTrip(bob.socket, Buffer.from('still here')), Buffer.from('still here'));
  bob.socket.destroy();
});

t.test('maximum session time: 4008 with a JSON reason, CONNECT closed, parked time counted, no way back with the resume token', async (t) => {
  const { gw, echo } = await setupDesk(t);
  await setPolicy(gw, { policy: { maxSessionMs: 600 } });

  const started = Date.now();
  const { closed, resume } = await wsTunnel(t, gw);
  const connect = await connectTunnel(gw);
  t.equal(connect.status, 200);
  const ws = await closed;
  t.equal(ws.code, 4008, 'the WebSocket client gets 4008');
  t.same(JSON.parse(ws.reason), { code: 'ONEPORT_ERR_SESSION_EXPIRED', maxSessionMs: 600 }, 'and a JSON reason naming the limit');
  t.ok(Date.now() - started >= 550, 'not before the time was up');
  await closedWithin(connect.socket, 5000);
  t.pass('the CONNECT client sees its connection close');
  await gw.ctx.tunnels.whenEmpty();
  t.equal(gw.logs.filter((l) => l.event === 'tunnel' && l.closeReason === 'session-expired').length, 2, 'both logged with the reason');
  t.equal((await gw.ctx.metrics.sessionsExpired.get()).values[0]?.value, 2, 'and counted');

  // The resume token would be a way back into the same session: its time is up.
  const accepted = echo.accepted;
  const again = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?resume=${encodeURIComponent(resume)}`, ['binary'], { ca: gw.caCert });
  again.on('error', () => {});
  t.teardown(() => again.terminate());
  const [code, reason] = (await once(again, 'close')) as [number, Buffer];
  t.equal(code, 4008, 'a reconnect with the resume token is refused with 4008');
  t.equal(reason.toString(), 'ONEPORT_ERR_SESSION_EXPIRED');
  t.equal(echo.accepted, accepted, 'without dialling the console');

  // oneport.v1: the session parks when its leg drops; its time keeps running from the first leg.
  const v1 = await wsTunnel(t, gw, 'alice', 'desk', ['oneport.v1']);
  const parkedAt = Date.now();
  const [hello] = (await once(v1.ws, 'message')) as [Buffer];
  const session = (JSON.parse(hello.toString()) as { session: string }).session;
  (v1.ws as unknown as { _socket: net.Socket })._socket.destroy();
  await until(() => gw.ctx.sessions.get(session)?.parked === true);
  await until(() => gw.ctx.sessions.get(session) === undefined, { timeoutMs: 5000 });
  t.ok(Date.now() - parkedAt < 5000, 'the parked session ended at its time, long before the 30 s grace period');
  await until(() => gw.logs.filter((l) => l.event === 'tunnel' && l.closeReason === 'session-expired').length === 3);
  t.pass('logged as session-expired');
});

t.test('session caps on one node: per user and per VM; a SPICE client\'s second channel is the same session', async (t) => {
  const { gw, echo } = await setupDesk(t, { limits: { maxSessionsPerUser: 1 } });
  await gw.addUser('bob', 'bob-password-1');
  await gw.addUser('carol', 'carol-password-1');
  await gw.addVm('shared', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], ['alice', 'bob', 'carol'], { maxSessions: 2 });

  // alice: the configured default, one session.
  const first = await wsTunnel(t, gw);
  const accepted = echo.accepted;
  const { ticket } = await gw.ticket('alice', 'desk');
  const refused = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, ['binary'], { ca: gw.caCert });
  refused.on('error', () => {});
  t.teardown(() => refused.terminate());
  const [code, reason] = (await once(refused, 'close')) as [number, Buffer];
  t.same([code, reason.toString()], [4429, 'ONEPORT_ERR_SESSION_LIMIT'], 'a second session over WebSocket: 4429');
  const overConnect = await connectTunnel(gw, 'alice', 'shared');
  t.equal(overConnect.status, 429, 'over CONNECT: 429, on any VM');
  t.match(overConnect.body, /ONEPORT_ERR_SESSION_LIMIT/, 'with the code');
  t.equal(echo.accepted, accepted, 'no console was dialled for them');

  // The same ticket from the same address again (a SPICE client's next channel): same session.
  const channelTicket = await gw.ticket('alice', 'shared');
  first.ws.close(1000);
  await first.closed;
  await gw.ctx.tunnels.whenEmpty();
  const channels: net.Socket[] = [];
  for (let i = 0; i < 2; i++) {
    const r = await rawRequest(gw.port, `CONNECT shared:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', channelTicket.ticket)}\r\n\r\n`, { ca: gw.caCert });
    t.equal(r.status, 200, `channel ${i + 1} of one session: 200`);
    channels.push(r.socket as net.Socket);
  }
  t.equal(new Set(gw.ctx.tunnels.list().map((x) => x.sessionId)).size, 1, 'one session, two tunnels');

  // The VM's own cap: two sessions on "shared" (alice's is one); bob takes the second, carol is refused.
  const bob = await connectTunnel(gw, 'bob', 'shared');
  t.equal(bob.status, 200, 'bob: the VM\'s second session');
  const carol = await connectTunnel(gw, 'carol', 'shared');
  t.equal(carol.status, 429, 'carol: the VM is full');
  t.equal((await gw.ctx.metrics.sessionCapRefusals.get()).values.find((v) => v.labels.scope === 'vm')?.value, 1, 'counted by scope');

  // With a password (no ticket binds the channels): one user's connections to one console from
  // one address at the same time are one session; from another address, another session.
  for (const s of channels) s.destroy();
  await until(() => gw.ctx.broker.caps.size === 1);
  const byPassword = (localAddress?: string) =>
    rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: gw.caCert, ...(localAddress ? { localAddress } : {}) });
  const p1 = await byPassword();
  const p2 = await byPassword();
  t.same([p1.status, p2.status], [200, 200], 'two channels with a password: one session');
  t.equal((await byPassword('127.0.0.2')).status, 429, 'the same password from another address: a second session, over the cap');
  p1.socket.destroy();
  p2.socket.destroy();

  // Slots come back when sessions end; a user's own maxSessions overrides the default.
  bob.socket.destroy();
  await until(() => gw.ctx.broker.caps.size === 0);
  await gw.ctx.dir.putUser({ ...gw.ctx.dir.getUser('alice')!, maxSessions: 2 });
  const a1 = await connectTunnel(gw, 'alice', 'desk');
  const a2 = await connectTunnel(gw, 'alice', 'desk');
  t.same([a1.status, a2.status], [200, 200], 'alice\'s own cap (2) applies instead of the default (1)');
  a1.socket.destroy();
  a2.socket.destroy();
});

/** JSON API calls over TLS, as `token`'s user. */
function apiClient(t: Test, gw: TestGateway): (method: string, path: string, opts?: { token?: string; body?: unknown }) => Promise<{ status: number; body: any }> {
  const dispatcher = new Agent({ connect: { ca: gw.caCert, servername: 'localhost' } });
  t.teardown(() => dispatcher.close());
  return async (method, path, opts = {}) => {
    const r = await request(`https://localhost:${gw.port}${path}`, {
      method: method as 'GET',
      dispatcher,
      headers: { ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}), ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    const text = await r.body.text();
    return { status: r.statusCode, body: text ? JSON.parse(text) : undefined };
  };
}

async function login(api: ReturnType<typeof apiClient>, user: string, password: string): Promise<string> {
  const r = await api('POST', '/api/login', { body: { user, password } });
  if (r.status !== 200) throw new Error(`login ${user}: ${r.status}`);
  return r.body.token as string;
}

t.test('admin session list and terminate: live bytes, parked sessions, 4003 terminated, no way back with the resume token', async (t) => {
  const { gw } = await setupDesk(t);
  await gw.addUser('root', 'root-password-1', { admin: true });
  const api = apiClient(t, gw);
  const root = await login(api, 'root', 'root-password-1');
  const alice = await login(api, 'alice', 'alice-password-1');

  t.equal((await api('GET', '/api/sessions')).status, 401, 'not without credentials');
  t.equal((await api('GET', '/api/sessions', { token: alice })).status, 403, 'not for a user');
  t.equal((await api('GET', '/api/sessions?local=1', { token: root })).status, 403, 'local=1 is for the nodes of a cluster');

  const ws = await wsTunnel(t, gw);
  const connect = await connectTunnel(gw);
  t.same(await echoRoundTrip(connect.socket, Buffer.from('0123456789')), Buffer.from('0123456789'));
  const v1 = await wsTunnel(t, gw, 'alice', 'desk', ['oneport.v1']);
  const [hello] = (await once(v1.ws, 'message')) as [Buffer];
  const parkedId = (JSON.parse(hello.toString()) as { session: string }).session;
  (v1.ws as unknown as { _socket: net.Socket })._socket.destroy();
  await until(() => gw.ctx.sessions.get(parkedId)?.parked === true);

  const list = await api('GET', '/api/sessions', { token: root });
  t.equal(list.status, 200);
  t.equal(list.body.sessions.length, 3, 'three live tunnels');
  t.same(list.body.nodes, [{ node: 'test', state: 'up', answered: true, sessions: 3 }]);
  t.equal(list.body.complete, true);
  const byTransport = (tr: string, parked = false) => list.body.sessions.find((x: { transport: string; parked: boolean }) => x.transport === tr && x.parked === parked);
  t.match(byTransport('connect-tls'), { id: /^test:\d+$/, user: 'alice', vm: 'desk', protocol: 'vnc', entryNode: 'test', consoleNode: 'test', client: '127.0.0.1', bytesToConsole: 10, bytesToClient: 10, parked: false });
  t.ok(Date.parse(byTransport('connect-tls').since) <= Date.now());
  t.ok(byTransport('websocket', true), 'the parked oneport.v1 session is listed, as parked');

  // One tunnel: the WebSocket client gets 4003 "terminated"; its resume token no longer works.
  const wsId = list.body.sessions.find((x: { transport: string; parked: boolean }) => x.transport === 'websocket' && !x.parked).id as string;
  const killed = await api('DELETE', `/api/sessions/${encodeURIComponent(wsId)}`, { token: root });
  t.match(killed, { status: 200, body: { id: wsId, node: 'test', ended: 1 } });
  const closed = await ws.closed;
  t.equal(closed.code, 4003);
  t.same(JSON.parse(closed.reason), { code: 'ONEPORT_ERR_FORBIDDEN', reason: 'terminated' });
  const back = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?resume=${encodeURIComponent(ws.resume)}`, ['binary'], { ca: gw.caCert });
  back.on('error', () => {});
  t.teardown(() => back.terminate());
  const [backCode] = (await once(back, 'close')) as [number];
  t.equal(backCode, 4401, 'the terminated session\'s resume token is refused');
  t.equal((await api('DELETE', `/api/sessions/${encodeURIComponent(wsId)}`, { token: root })).status, 404, 'gone: 404');
  t.equal((await api('DELETE', '/api/sessions/test%3A999', { token: alice })).status, 403, 'not for a user');

  // All of a user's: the CONNECT tunnel and the parked session.
  const all = await api('DELETE', '/api/users/alice/sessions', { token: root });
  t.match(all, { status: 200, body: { user: 'alice', ended: 2, complete: true } });
  await closedWithin(connect.socket, 5000);
  await until(() => gw.ctx.sessions.get(parkedId) === undefined);
  t.pass('the CONNECT tunnel and the parked session ended');
  await gw.ctx.tunnels.whenEmpty();
  t.equal((await gw.ctx.metrics.revoked.get()).values.find((v) => v.labels.reason === 'terminated')?.value, 3, 'counted as terminated');
  t.same((await api('GET', '/api/sessions', { token: root })).body.sessions, []);
});

t.test('audit: one record per session and per admin change, in a 0600 file, never a secret; the webhook is retried, bounded, and never holds a tunnel', async (t) => {
  const received: unknown[][] = [];
  let failFirst = 2;
  const hook = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      if (failFirst-- > 0) {
        res.writeHead(503).end();
        return;
      }
      received.push(JSON.parse(body) as unknown[]);
      res.writeHead(204).end();
    });
  });
  hook.listen(0, '127.0.0.1');
  await once(hook, 'listening');
  t.teardown(() => hook.close());
  const hookUrl = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/audit?key=hook-secret`;
  const { gw } = await setupDesk(t, { audit: { webhook: hookUrl } });
  await gw.addUser('root', 'root-password-1', { admin: true });
  const api = apiClient(t, gw);
  const root = await login(api, 'root', 'root-password-1');

  const { ticket, resume } = await gw.ticket('alice', 'desk');
  const tunnel = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca: gw.caCert });
  t.equal(tunnel.status, 200);
  await echoRoundTrip(tunnel.socket, Buffer.from('abc'));
  tunnel.socket.end();
  await gw.ctx.tunnels.whenEmpty();
  t.equal((await api('PUT', '/api/users/alice', { token: root, body: { password: 'a-new-password-2', maxSessions: 3 } })).status, 200);
  t.equal((await api('PUT', '/api/vms/desk', { token: root, body: { node: 'test', endpoints: gw.ctx.dir.getVm('desk')!.endpoints, users: ['alice'], policy: { maxSessionMs: 3_600_000 } } })).status, 200);

  const file = join(gw.state, 'audit.log');
  await until(() => readFileSync(file, 'utf8').split('\n').filter(Boolean).length >= 3);
  t.equal(statSync(file).mode & 0o777, 0o600, 'the file is 0600');
  const text = readFileSync(file, 'utf8');
  const records = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.match(records[0], { kind: 'session', user: 'alice', vm: 'desk', protocol: 'vnc', transport: 'connect-tls', client: '127.0.0.1', via: 'ticket', entryNode: 'test', consoleNode: 'test', bytesToConsole: 3, bytesToClient: 3, closeReason: 'client-closed' });
  t.ok(Date.parse(String(records[0]!.start)) <= Date.parse(String(records[0]!.end)), 'with start and end');
  t.match(records[1], { kind: 'admin', actor: 'root', via: 'api', client: '127.0.0.1', action: 'user.update', target: { type: 'user', name: 'alice' }, details: { fields: ['maxSessions', 'password'] } });
  t.match(records[2], { kind: 'admin', actor: 'root', action: 'vm.update', target: { type: 'vm', name: 'desk' } });
  for (const secret of ['a-new-password-2', gw.ctx.dir.getUser('alice')!.passwordHash, ticket, resume, root]) t.notOk(text.includes(secret), 'no password, hash, ticket or token in the file');

  // The webhook failed twice, then took everything, in order, once.
  await until(() => received.flat().length === 3, { timeoutMs: 10_000 });
  t.same(received.flat(), records, 'the webhook got the same records');
  t.notOk(gw.logText().includes('hook-secret'), 'the webhook URL\'s secret is never logged');
});

t.test('audit webhook: a full queue drops (and counts) records, and tunnels do not wait for it', async (t) => {
  const hook = http.createServer((_req, res) => res.writeHead(503).end());
  hook.listen(0, '127.0.0.1');
  await once(hook, 'listening');
  t.teardown(() => hook.close());
  const { gw } = await setupDesk(t, { audit: { webhook: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/`, webhookQueue: 2, file: false } });
  for (let i = 0; i < 5; i++) {
    const c = await connectTunnel(gw);
    t.equal(c.status, 200, `tunnel ${i + 1} opens while the webhook fails`);
    c.socket.destroy();
    await gw.ctx.tunnels.whenEmpty();
  }
  const dropped = (await gw.ctx.metrics.auditDropped.get()).values.find((v) => v.labels.reason === 'queue-full')?.value;
  t.equal(dropped, 3, 'five records, a queue of two: three dropped and counted');
  t.notOk(existsSync(join(gw.state, 'audit.log')), 'audit.file false: no file');
});
