/**
 * Session controls (security issue) against a real gateway on loopback: the VM's idle timeout and
 * maximum session time (with per-group overrides), the session caps on one node, the admin
 * session list and terminate calls, and the audit file.
 */
import t, { type Test } from 'tap';
import { once } from 'node:events';
import type net from 'node:net';
import { WebSocket } from 'ws';
import type { TestGateway } from '../helpers/gateway.js';
import { setupDesk } from '../helpers/scenario.js';
import { basic, closedWithin, echoRoundTrip, rawRequest, until } from '../helpers/net.js';

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

  // Slots come back when sessions end; a user's own maxSessions overrides the default.
  for (const s of channels) s.destroy();
  bob.socket.destroy();
  await until(() => gw.ctx.broker.caps.size === 0);
  await gw.ctx.dir.putUser({ ...gw.ctx.dir.getUser('alice')!, maxSessions: 2 });
  const a1 = await connectTunnel(gw, 'alice', 'desk');
  const a2 = await connectTunnel(gw, 'alice', 'desk');
  t.same([a1.status, a2.status], [200, 200], 'alice\'s own cap (2) applies instead of the default (1)');
  a1.socket.destroy();
  a2.socket.destroy();
});
