/**
 * Regression tests for the security review (issue 10): each names the finding it covers and fails
 * without its fix. Real gateway, real sockets on loopback.
 */
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { basic, echoRoundTrip, rawRequest } from '../helpers/net.js';
import { setupDesk, startStreamer } from '../helpers/scenario.js';
import type { TestGateway } from '../helpers/gateway.js';
import { apiClient, ok } from '../helpers/api.js';
import { until } from '../helpers/wait.js';

const upgrade = (path: string, proto = 'websocket'): string =>
  `GET ${path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: ${proto}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;

t.test('1: requests that once stopped the process get 400, and every tunnel keeps flowing', async (t) => {
  const { gw } = await setupDesk(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const tunnel = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca: gw.caCert });
  t.equal(tunnel.status, 200, 'a tunnel is open before the hostile requests');
  t.teardown(() => tunnel.socket.destroy());
  const hostile: Array<[string, string, number]> = [
    ['malformed %-escape in a tunnel path', upgrade('/tunnel/%E0%A4%A/vnc'), 400],
    ['malformed %-escape in the protocol', upgrade('/tunnel/desk/%ZZ'), 400],
    ['unparsable request target, h2c upgrade', upgrade('//[', 'h2c'), 400],
    ['unparsable request target, websocket upgrade', upgrade('//[', 'websocket'), 400],
    // Finding 8: the API answered 500 with an error-level stack trace.
    ['malformed %-escape in an API path', 'GET /api/vms/%E0%A4%A HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', 400],
    ['malformed %-escape in a user path', 'DELETE /api/users/% HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', 400],
  ];
  for (const [name, request, status] of hostile) {
    const r = await rawRequest(gw.port, request, { ca: gw.caCert });
    t.equal(r.status, status, `${name}: ${status}`);
    r.socket.destroy();
  }
  const back = await echoRoundTrip(tunnel.socket, Buffer.from('still here'));
  t.equal(back.toString(), 'still here', 'the tunnel opened before still carries bytes');
  const health = await rawRequest(gw.port, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', { ca: gw.caCert });
  t.equal(health.status, 200, 'and the gateway still answers');
  t.same(gw.logs.filter((l) => l.level === 50 || l.level === 'error'), [], 'nothing was logged as an internal error');
  t.equal((await gw.ctx.metrics.internalErrors.get()).values.reduce((a, v) => a + v.value, 0), 0, 'no handler failed');
  tunnel.socket.end();
  await once(tunnel.socket, 'close');
});

/** A WebSocket tunnel to desk for alice, open and echoing. */
async function openWsTunnel(t: Test, gw: TestGateway): Promise<{ ws: WebSocket; closed: Promise<{ code: number; reason: string }> }> {
  const { ticket } = await gw.ticket('alice', 'desk');
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, ['binary'], { ca: gw.caCert });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
  await once(ws, 'open');
  const echoed = once(ws, 'message');
  ws.send(Buffer.from('hi'));
  await echoed;
  return { ws, closed };
}

t.test('5: revocation reaches live tunnels: user deleted, password changed, VM unassigned or deleted', async (t) => {
  const cases: Array<[string, (gw: TestGateway) => Promise<unknown>, string]> = [
    ['user deleted', (gw) => gw.ctx.dir.deleteUser('alice'), 'user-deleted'],
    // What `PUT /api/users/alice {password}` and `oneport user add alice --password` write.
    ['password changed', (gw) => gw.ctx.dir.putUser({ ...gw.ctx.dir.getUser('alice')!, passwordHash: 'scrypt$changed', sessionsNotBefore: Date.now() }), 'password-changed'],
    ['VM unassigned', async (gw) => gw.ctx.dir.putVm({ ...gw.ctx.dir.getVm('desk')!, users: [] }), 'unassigned'],
    ['VM deleted', (gw) => gw.ctx.dir.deleteVm('desk'), 'vm-deleted'],
  ];
  for (const [name, revoke, reason] of cases) {
    const { gw } = await setupDesk(t);
    const { ticket } = await gw.ticket('alice', 'desk');
    const tunnel = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca: gw.caCert });
    t.equal(tunnel.status, 200, `${name}: a CONNECT tunnel is open`);
    tunnel.socket.on('error', () => {});
    const connectClosed = once(tunnel.socket, 'close');
    tunnel.socket.resume();
    const { closed } = await openWsTunnel(t, gw);
    if (name === 'password changed') await new Promise((r) => setTimeout(r, 5)); // sessionsNotBefore is a ms clock
    await revoke(gw);
    const ws = await closed;
    t.equal(ws.code, 4003, `${name}: the WebSocket tunnel ends with 4003`);
    t.match(JSON.parse(ws.reason), { code: 'ONEPORT_ERR_FORBIDDEN', reason }, `${name}: the reason says why`);
    await connectClosed;
    t.pass(`${name}: the CONNECT tunnel is closed`);
    await gw.ctx.tunnels.whenEmpty();
    t.ok(gw.logs.some((l) => l.event === 'tunnels-revoked' && l.reason === reason), `${name}: logged`);
  }
});

t.test('5: a parked oneport.v1 session is ended by revocation, and a resume after an unassignment is refused', async (t) => {
  const { gw } = await setupDesk(t);
  const { ticket, resume } = await gw.ticket('alice', 'desk');
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, ['oneport.v1'], { ca: gw.caCert });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  const [hello] = (await once(ws, 'message')) as [Buffer];
  const session = (JSON.parse(hello.toString()) as { session: string }).session;
  // The leg drops without a close: the session parks.
  (ws as unknown as { _socket: import('node:net').Socket })._socket.destroy();
  await until(() => gw.ctx.sessions.get(session)?.parked === true, { timeoutMs: 5000 });
  await gw.ctx.dir.putVm({ ...gw.ctx.dir.getVm('desk')!, users: [] });
  await until(() => gw.ctx.sessions.get(session) === undefined, { timeoutMs: 5000 });
  t.pass('the parked session ended when access ended');
  const again = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?resume=${encodeURIComponent(resume)}&session=${session}&received=0`, ['oneport.v1'], { ca: gw.caCert });
  again.on('error', () => {});
  t.teardown(() => again.terminate());
  const [code] = (await once(again, 'close')) as [number];
  t.not(code, 1000, `the resume is refused (${code})`);
  t.ok([4003, 4001].includes(code), 'with "forbidden" or "start afresh" (where the fresh tunnel is then refused)');
});


t.test('5: a logout ends the live tunnels its session opened (tickets and resume tokens), not the user\'s other sessions', async (t) => {
  const { gw } = await setupDesk(t);
  const api = apiClient(t, gw);
  const login = async (): Promise<string> => ok(await api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).token;
  const [mine, other] = [await login(), await login()];
  const open = async (token: string): Promise<{ closed: Promise<{ code: number; reason: string }> }> => {
    const { ticket } = ok(await api<{ ticket: string }>('POST', '/api/desktops/desk/tickets', { token, body: { protocol: 'vnc' } }));
    const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, ['binary'], { ca: gw.caCert });
    ws.on('error', () => {});
    t.teardown(() => ws.terminate());
    const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
    await once(ws, 'open');
    return { closed };
  };
  const { closed: mineClosed } = await open(mine);
  let otherEnded = false;
  void (await open(other)).closed.then(() => (otherEnded = true));
  t.equal((await api('POST', '/api/logout', { token: mine })).status, 200);
  const closed = await mineClosed;
  t.equal(closed.code, 4003, 'the logged-out session\'s tunnel ends with 4003');
  t.match(JSON.parse(closed.reason), { reason: 'logged-out' });
  await until(() => gw.logs.some((l) => l.event === 'tunnels-revoked' && l.reason === 'logged-out'), { timeoutMs: 5000 });
  t.equal(gw.ctx.tunnels.size, 1, 'the other session\'s tunnel stays');
  t.notOk(otherEnded, 'and its client was not closed');
});

t.test('suspected: a client that floods pings and never reads is cut, not buffered without bound', async (t) => {
  const gw = (await setupDesk(t)).gw;
  const streamer = await startStreamer(t);
  await gw.addVm('stream', [{ protocol: 'vnc', host: '127.0.0.1', port: streamer.port, publishedPort: 5900 }], ['alice']);
  const { ticket } = await gw.ticket('alice', 'stream');
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/stream/vnc?ticket=${ticket}`, ['binary'], { ca: gw.caCert });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  const closed = once(ws, 'close');
  // Stop reading: the console's stream fills every buffer between us, then our pongs wait.
  (ws as unknown as { _socket: import('node:net').Socket })._socket.pause();
  const payload = Buffer.alloc(125, 1);
  const flood = setInterval(() => {
    for (let i = 0; i < 200 && ws.readyState === WebSocket.OPEN; i++) ws.ping(payload);
  }, 5);
  t.teardown(() => clearInterval(flood));
  await closed;
  clearInterval(flood);
  t.pass('the gateway cut the client');
  await gw.ctx.tunnels.whenEmpty();
  t.equal(gw.ctx.tunnels.size, 0, 'and its tunnel is gone');
});
