/**
 * The console handshake (gateway/tunnel/console-handshake.ts) through a real gateway: console
 * passwords kept in the directory (Xvnc with -rfbauth, QEMU's SPICE with a password), the
 * protocol check, and hostile consoles and clients that lie (fake servers here, on loopback).
 * Clients are this test's own raw sockets and WebSockets; the real-client runs (vncsnapshot,
 * noVNC, remote-viewer, spice-html5) are in test/e2e/console-passwords.test.ts.
 */
import t, { type Test } from 'tap';
import type net from 'node:net';
import { randomBytes } from 'node:crypto';
import { createWebSocketStream } from 'ws';
import type { Duplex } from 'node:stream';
import { type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { type Backend, closedWithin, errorCode, freePort, rawRequest, startBackend } from '../helpers/net.js';
import { streamQueue } from '../helpers/bytes.js';
import { closeOf, openWs, opened } from '../helpers/ws.js';
import { apiClient, ok } from '../helpers/api.js';
import { pixelAt, rfbConnect, rfbRequestFrame } from '../helpers/rfb-client.js';
import { missingCommands } from '../helpers/netns.js';
import { solidRoot, startXvncWithPassword } from '../helpers/x11.js';
import { startQemuSpiceWithPassword } from '../helpers/qemu.js';
import type { EndpointInput } from '../../gateway/directory/directory.js';
import type { Protocol } from '../../gateway/directory/directory.js';
import {
  SPICE_CHANNEL,
  SPICE_COMMON_CAP,
  SPICE_LINK_ERR,
  SPICE_LINK_HEADER_BYTES,
  parseSpiceLinkReply,
  spiceAuthMechanismMessage,
  spiceLinkMessMessage,
  spiceLinkReplyMessage,
} from '../../protocols/spice-auth.js';
import { protocolVersionMessage, securityRefusal } from '../../protocols/vnc-auth.js';
import { RedisDirectory } from '../../gateway/directory/redis.js';
import { putVm, setConsolePassword } from '../../gateway/directory/commands.js';
import { startRedis } from '../helpers/redis.js';
import { eventually } from '../helpers/wait.js';

const HANDSHAKE_MS = 1500;
const WAIT_MS = 10_000;

async function scene(t: Test): Promise<TestGateway> {
  const gw = await startTestGateway(t, { tunnel: { protocolCheck: true, handshakeTimeoutMs: HANDSHAKE_MS } });
  await gw.addUser('alice', 'alice-password-1');
  return gw;
}

async function addVm(gw: TestGateway, name: string, protocol: Protocol, port: number, extra: { password?: string; protocolCheck?: boolean } = {}): Promise<void> {
  const endpoint: EndpointInput = { protocol, host: '127.0.0.1', port, publishedPort: protocol === 'rdp' ? 3389 : 5900, ...(extra.password ? { password: extra.password } : {}) };
  await gw.addVm(name, [endpoint], ['alice'], extra.protocolCheck === undefined ? {} : { protocolCheck: extra.protocolCheck });
}

/** A clear-text CONNECT with a fresh ticket in the host name; the tunnel's early bytes are put back in front of the socket's queue. */
async function connect(t: Test, gw: TestGateway, vm: string, protocol: Protocol): Promise<{ status: number; body: string; socket: net.Socket }> {
  const { ticket } = await gw.ticket('alice', vm, protocol);
  const port = protocol === 'rdp' ? 3389 : 5900;
  const r = await rawRequest(gw.port, `CONNECT ${ticket}.${vm}:${port} HTTP/1.1\r\nHost: ${ticket}.${vm}:${port}\r\n\r\n`, { timeoutMs: WAIT_MS });
  const socket = r.socket as net.Socket;
  t.teardown(() => socket.destroy());
  if (r.status === 200 && r.rest.length > 0) streamQueue(socket).push(r.rest);
  return { status: r.status, body: r.body, socket };
}

/** A WebSocket tunnel as a byte stream (`binary` subprotocol). */
async function wsTunnel(t: Test, gw: TestGateway, vm: string, protocol: Protocol): Promise<{ ws: ReturnType<typeof openWs>; stream: Duplex }> {
  const { ticket } = await gw.ticket('alice', vm, protocol);
  const ws = openWs(t, gw, `/tunnel/${vm}/${protocol}?ticket=${ticket}`);
  await opened(ws);
  const stream = createWebSocketStream(ws);
  stream.on('error', () => {});
  return { ws, stream };
}

async function handshakes(gw: TestGateway, protocol: string, result: string): Promise<number> {
  const m = await gw.ctx.metrics.consoleHandshakes.get();
  return m.values.find((v) => v.labels.protocol === protocol && v.labels.result === result)?.value ?? 0;
}

function failureLogs(gw: TestGateway, vm: string): Array<Record<string, unknown>> {
  return gw.logs.filter((l) => l.event === 'console-handshake-failed' && l.vm === vm);
}

const noXvnc = missingCommands([['Xvnc', 'tigervnc-standalone-server'], ['vncpasswd', 'tigervnc-tools'], ['xsetroot', 'x11-xserver-utils']]);

t.test('VNC: the gateway logs in with the stored password and offers the client None, in every RFB version', { skip: noXvnc }, async (t) => {
  const gw = await scene(t);
  const password = 'k33p-0ut';
  const port = await freePort();
  const x = await startXvncWithPassword(t, port, password);
  await solidRoot(x.display, [0x20, 0xc0, 0x40]);
  await addVm(gw, 'locked', 'vnc', port, { password });

  // RFB 3.8 over CONNECT: the test's client knows only security type None.
  const c = await connect(t, gw, 'locked', 'vnc');
  t.equal(c.status, 200, 'CONNECT answered 200 once the console accepted the stored password');
  const session = await rfbConnect(c.socket);
  t.same([session.version, session.width, session.height], ['RFB 003.008\n', 320, 240], 'a 3.8 session with None, ServerInit from Xvnc');
  const frame = await rfbRequestFrame(c.socket, session);
  const px = pixelAt(frame, session, 160, 120);
  t.ok(px.every((v, i) => Math.abs(v - ([0x20, 0xc0, 0x40][i] ?? 0)) <= 8), `the desktop's pixels come through (${px.join(',')})`);
  c.socket.destroy();

  // RFB 3.3 and 3.7 clients: the gateway answers each in its own version.
  for (const [version, offer] of [['3.3', Buffer.from([0, 0, 0, 1])], ['3.7', Buffer.from([1, 1])]] as const) {
    const v = await connect(t, gw, 'locked', 'vnc');
    const q = streamQueue(v.socket);
    t.equal((await q.read(12, WAIT_MS, 'banner')).toString('latin1'), 'RFB 003.008\n');
    v.socket.write(protocolVersionMessage(version));
    t.same(await q.read(offer.length, WAIT_MS, 'security offer'), offer, `RFB ${version}: only None offered`);
    if (version === '3.7') v.socket.write(Buffer.from([1]));
    v.socket.write(Buffer.from([1])); // ClientInit, shared
    const init = await q.read(24, WAIT_MS, 'ServerInit');
    t.same([init.readUInt16BE(0), init.readUInt16BE(2)], [320, 240], `RFB ${version}: ServerInit follows`);
    v.socket.destroy();
  }

  // The browser's way: a WebSocket.
  const w = await wsTunnel(t, gw, 'locked', 'vnc');
  const ws = await rfbConnect(w.stream);
  t.same([ws.width, ws.height], [320, 240], 'WebSocket: the same, without the password');
  w.ws.close();
  t.ok((await handshakes(gw, 'vnc', 'ok')) >= 4, 'each counted ok');
  t.notOk(gw.logText().includes(password), 'the password is in no log line');
});

t.test('VNC: a wrong stored password is a clear 502 / 4511 for the user and a warning naming the VM for the admin', { skip: noXvnc }, async (t) => {
  const gw = await scene(t);
  const port = await freePort();
  await startXvncWithPassword(t, port, 'the-real-one');
  await addVm(gw, 'stale', 'vnc', port, { password: 'outdated' });

  const c = await connect(t, gw, 'stale', 'vnc');
  t.equal(c.status, 502, 'CONNECT: 502, no 200 first');
  t.equal(errorCode(c.body), 'ONEPORT_ERR_CONSOLE_AUTH');
  const w = openWs(t, gw, `/tunnel/stale/vnc?ticket=${(await gw.ticket('alice', 'stale', 'vnc')).ticket}`);
  const closed = await closeOf(w, WAIT_MS);
  t.equal(closed.code, 4511, `WebSocket closed 4511 (${closed.reason})`);
  const logs = failureLogs(gw, 'stale');
  t.ok(logs.length >= 1 && logs.every((l) => l.level === 40 && l.result === 'console-auth'), 'a warning naming the VM');
  t.equal(await handshakes(gw, 'vnc', 'console-auth'), 2, 'counted');
  t.notOk(/outdated|the-real-one/.test(gw.logText()), 'no password in the logs');
});

/** Link one SPICE channel through a tunnel as a client that knows no password: a ticket of random bytes. */
async function spiceLinkThrough(stream: Duplex): Promise<{ result: number; next: () => Promise<Buffer> }> {
  const q = streamQueue(stream);
  const caps = (1 << SPICE_COMMON_CAP.PROTOCOL_AUTH_SELECTION) | (1 << SPICE_COMMON_CAP.AUTH_SPICE) | (1 << SPICE_COMMON_CAP.MINI_HEADER);
  stream.write(spiceLinkMessMessage({ connectionId: 0, channelType: SPICE_CHANNEL.MAIN, channelId: 0, commonCaps: [caps], channelCaps: [] }));
  const head = await q.read(SPICE_LINK_HEADER_BYTES, WAIT_MS, 'link reply header');
  const body = await q.read(head.readUInt32LE(12), WAIT_MS, 'link reply');
  const reply = parseSpiceLinkReply(Buffer.concat([head, body]));
  if (reply.kind !== 'done' || reply.value.error !== SPICE_LINK_ERR.OK) throw new Error(`link reply: ${JSON.stringify(reply)}`);
  stream.write(Buffer.concat([spiceAuthMechanismMessage(), randomBytes(128)]));
  const result = (await q.read(4, WAIT_MS, 'link result')).readUInt32LE(0);
  return { result, next: () => q.read(6, WAIT_MS, 'first message') };
}

t.test('SPICE: the gateway swaps the client\'s ticket for the stored password; a wrong one reaches the client as PERMISSION_DENIED, then 4511', { skip: missingCommands([['qemu-system-x86_64', 'qemu-system-x86']]) }, async (t) => {
  const gw = await scene(t);
  const password = 'c0ns0le-only';
  const port = await freePort();
  await startQemuSpiceWithPassword(t, port, password);
  await addVm(gw, 'spicy', 'spice', port, { password });
  await addVm(gw, 'sour', 'spice', port, { password: 'c0ns0le-onlY' });

  const c = await connect(t, gw, 'spicy', 'spice');
  t.equal(c.status, 200);
  const linked = await spiceLinkThrough(c.socket);
  t.equal(linked.result, SPICE_LINK_ERR.OK, 'CONNECT: a ticket of random bytes became the right one: link OK');
  t.equal((await linked.next()).readUInt16LE(0), 103, 'and the main channel sends MAIN_INIT');
  c.socket.destroy();

  const w = await wsTunnel(t, gw, 'spicy', 'spice');
  t.equal((await spiceLinkThrough(w.stream)).result, SPICE_LINK_ERR.OK, 'WebSocket: link OK');
  w.ws.close();

  const bad = await connect(t, gw, 'sour', 'spice');
  t.equal((await spiceLinkThrough(bad.socket)).result, SPICE_LINK_ERR.PERMISSION_DENIED, 'wrong stored password: the client reads PERMISSION_DENIED');
  await closedWithin(bad.socket, WAIT_MS);
  const bw = await wsTunnel(t, gw, 'sour', 'spice');
  const closing = closeOf(bw.ws, WAIT_MS);
  t.equal((await spiceLinkThrough(bw.stream)).result, SPICE_LINK_ERR.PERMISSION_DENIED);
  t.equal((await closing).code, 4511, 'then the WebSocket closes 4511');
  t.ok(failureLogs(gw, 'sour').some((l) => l.level === 40 && l.result === 'console-auth'), 'a warning naming the VM');
  t.equal(await handshakes(gw, 'spice', 'ok'), 2);
  t.equal(await handshakes(gw, 'spice', 'console-auth'), 2);
  t.notOk(/c0ns0le-only|c0ns0le-onlY/i.test(gw.logText()), 'no password in the logs');
});

/** A fake console that runs `script` on each connection. */
function fakeConsole(t: Test, script: (s: net.Socket) => void): Promise<Backend> {
  return startBackend(t, script);
}

t.test('hostile VNC consoles: lies and silence end in a clear 502 within the deadline, with bounded reads', async (t) => {
  const gw = await scene(t);
  const cases: Array<{ name: string; password?: string; script: (s: net.Socket) => void; code: string }> = [
    // A reason "length" of 2 GiB: refused at the cap, not allocated.
    { name: 'huge-reason', password: 'pw', script: (s) => s.write(Buffer.concat([protocolVersionMessage('3.8'), Buffer.from([0, 0x7f, 0xff, 0xff, 0xff])])), code: 'ONEPORT_ERR_CONSOLE_PROTOCOL' },
    { name: 'not-rfb', script: (s) => s.write('SSH-2.0-OpenSSH_9.6\r\n'), code: 'ONEPORT_ERR_CONSOLE_PROTOCOL' },
    { name: 'old-rfb', password: 'pw', script: (s) => s.write('RFB 002.000\n'), code: 'ONEPORT_ERR_CONSOLE_PROTOCOL' },
    { name: 'silent', script: () => {}, code: 'ONEPORT_ERR_CONSOLE_PROTOCOL' },
    { name: 'silent-after-banner', password: 'pw', script: (s) => s.write(protocolVersionMessage('3.8')), code: 'ONEPORT_ERR_CONSOLE_PROTOCOL' },
    { name: 'hangs-up', password: 'pw', script: (s) => s.end(protocolVersionMessage('3.8')), code: 'ONEPORT_ERR_CONSOLE_PROTOCOL' },
    { name: 'refuses', password: 'pw', script: (s) => s.once('data', () => s.write(securityRefusal('3.8', 'Too many security failures'))).write(protocolVersionMessage('3.8')), code: 'ONEPORT_ERR_CONSOLE_AUTH' },
    { name: 'tls-only', password: 'pw', script: (s) => s.once('data', () => s.write(Buffer.from([1, 19]))).write(protocolVersionMessage('3.8')), code: 'ONEPORT_ERR_CONSOLE_AUTH' },
  ];
  for (const c of cases) {
    const console = await fakeConsole(t, c.script);
    await addVm(gw, c.name, 'vnc', console.port, c.password ? { password: c.password } : {});
    const started = Date.now();
    const r = await connect(t, gw, c.name, 'vnc');
    t.same([r.status, errorCode(r.body)], [502, c.code], `${c.name}: 502 ${c.code}`);
    t.ok(Date.now() - started < HANDSHAKE_MS + 2000, `${c.name}: answered within the deadline (${Date.now() - started} ms)`);
  }
  // A console with no password that does speak RFB: its banner is checked, then replayed as it came.
  const honest = await fakeConsole(t, (s) => {
    s.write(protocolVersionMessage('3.7'));
    s.pipe(s);
  });
  await addVm(gw, 'honest', 'vnc', honest.port);
  const h = await connect(t, gw, 'honest', 'vnc');
  t.equal(h.status, 200);
  const q = streamQueue(h.socket);
  t.equal((await q.read(12, WAIT_MS)).toString('latin1'), 'RFB 003.007\n', 'the banner reaches the client untouched');
  h.socket.write('RFB 003.007\n');
  t.equal((await q.read(12, WAIT_MS)).toString('latin1'), 'RFB 003.007\n', 'and bytes flow both ways');
  // The same lie over a WebSocket: a close code, not a hang.
  const w = openWs(t, gw, `/tunnel/not-rfb/vnc?ticket=${(await gw.ticket('alice', 'not-rfb', 'vnc')).ticket}`);
  t.equal((await closeOf(w, WAIT_MS)).code, 4512, 'WebSocket: 4512');
  t.ok(failureLogs(gw, 'silent').length === 1 && failureLogs(gw, 'not-rfb').length >= 1, 'each logged with its VM');
});

t.test('hostile SPICE consoles: a bad reply, a huge one, or silence ends the tunnel (4512) within the deadline', async (t) => {
  const gw = await scene(t);
  const cases: Array<{ name: string; script: (s: net.Socket) => void }> = [
    { name: 'http-reply', script: (s) => s.once('data', () => s.write('HTTP/1.1 400 Bad Request\r\n\r\n')) },
    // A link body "of 1 GiB": refused at spice-server's own cap.
    { name: 'huge-reply', script: (s) => s.once('data', () => s.write(Buffer.concat([spiceLinkReplyMessage({ error: 0 }).subarray(0, 12), Buffer.from([0, 0, 0, 0x40])]))) },
    { name: 'silent', script: () => {} },
  ];
  for (const c of cases) {
    const console = await fakeConsole(t, c.script);
    await addVm(gw, c.name, 'spice', console.port, { password: 'pw' });
    const w = await wsTunnel(t, gw, c.name, 'spice');
    const started = Date.now();
    w.stream.write(spiceLinkMessMessage({ connectionId: 0, channelType: SPICE_CHANNEL.MAIN, channelId: 0, commonCaps: [0b1011], channelCaps: [] }));
    const closed = await closeOf(w.ws, HANDSHAKE_MS + 5000);
    t.equal(closed.code, 4512, `${c.name}: closed 4512 after ${Date.now() - started} ms`);
  }
  t.equal(await handshakes(gw, 'spice', 'console-protocol'), 3, 'each counted');
});

t.test('clients that lie about the protocol: not REDQ on SPICE, not TPKT on RDP, silence; nothing reaches the console', async (t) => {
  const gw = await scene(t);
  const received: Buffer[] = [];
  const echo = await fakeConsole(t, (s) => {
    s.on('data', (d: Buffer) => received.push(d));
    s.pipe(s);
  });
  await addVm(gw, 'spice-desk', 'spice', echo.port);
  await addVm(gw, 'rdp-desk', 'rdp', echo.port);
  await addVm(gw, 'unchecked', 'spice', echo.port, { protocolCheck: false });

  const http = await connect(t, gw, 'spice-desk', 'spice');
  t.equal(http.status, 200);
  http.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const ended = await closedWithin(http.socket, WAIT_MS);
  t.equal(ended.data.length, 0, 'a SPICE tunnel carrying HTTP: closed, nothing echoed');

  const ssh = await wsTunnel(t, gw, 'rdp-desk', 'rdp');
  const closing = closeOf(ssh.ws, WAIT_MS);
  ssh.stream.write('SSH-2.0-OpenSSH_9.6\r\n');
  t.equal((await closing).code, 4400, 'an RDP tunnel carrying SSH: closed 4400');

  const silent = await wsTunnel(t, gw, 'spice-desk', 'spice');
  const started = Date.now();
  t.equal((await closeOf(silent.ws, HANDSHAKE_MS + 5000)).code, 4400, `a silent client: 4400 after ${Date.now() - started} ms`);
  t.equal(received.length, 0, 'the console got none of those bytes');

  // The real thing passes: a SPICE link header, an X.224 Connection Request.
  const spice = await connect(t, gw, 'spice-desk', 'spice');
  const link = spiceLinkMessMessage({ connectionId: 0, channelType: 1, channelId: 0, commonCaps: [], channelCaps: [] });
  spice.socket.write(link);
  t.same(await streamQueue(spice.socket).read(link.length, WAIT_MS), link, 'REDQ passes (echoed back)');
  const cr = Buffer.from('030000130ee00000000000010008000b000000', 'hex');
  const rdp = await wsTunnel(t, gw, 'rdp-desk', 'rdp');
  rdp.stream.write(cr.subarray(0, 3)); // in pieces: held until the detector can say
  rdp.stream.write(cr.subarray(3));
  t.same(await streamQueue(rdp.stream).read(cr.length, WAIT_MS), cr, 'TPKT + X.224 CR passes');
  // The switch: a VM with protocolCheck false carries anything.
  const off = await connect(t, gw, 'unchecked', 'spice');
  off.socket.write('anything at all');
  t.equal((await streamQueue(off.socket).read(15, WAIT_MS)).toString(), 'anything at all', 'protocolCheck: false lets it through');
  t.equal(await handshakes(gw, 'spice', 'client-protocol'), 2);
  t.equal(await handshakes(gw, 'rdp', 'client-protocol'), 1);
  t.ok(failureLogs(gw, 'rdp-desk').some((l) => l.result === 'client-protocol' && l.level === 30), 'logged (info) with the VM');
});

t.test('API and directory: console passwords are set, kept and cleared, never returned, never logged', async (t) => {
  const gw = await scene(t);
  await gw.addUser('root', 'root-password-1', { admin: true });
  const api = apiClient(t, gw);
  const { token } = ok(await api<{ token: string }>('POST', '/api/login', { body: { user: 'root', password: 'root-password-1' } }));
  const secret = 'vnc-s3cret';
  const put = await api('PUT', '/api/vms/desk', { token, body: { node: 'test', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901, password: secret }, { protocol: 'rdp', host: '127.0.0.1', port: 3389 }], users: ['alice'] } });
  t.equal(put.status, 200);
  t.notOk(JSON.stringify(put.body).includes(secret), 'PUT does not echo it');
  t.same(put.body.endpoints[0], { protocol: 'vnc', host: '127.0.0.1', port: 5901, publishedPort: 5900, passwordSet: true }, 'it says one is set');
  t.equal(gw.ctx.dir.getVm('desk')?.endpoints[0]?.password, secret, 'the directory holds it');
  const list = ok(await api('GET', '/api/vms', { token }));
  const one = ok(await api('GET', '/api/vms/desk', { token }));
  t.notOk(JSON.stringify([list, one]).includes(secret), 'GET /api/vms and /api/vms/<vm> leave it out');

  // Read, change something else, write back: the password stays.
  const { endpoints, ...rest } = one as { endpoints: Array<Record<string, unknown>> };
  ok(await api('PUT', '/api/vms/desk', { token, body: { ...rest, name: undefined, endpoints, maxSessions: 3 } }));
  t.equal(gw.ctx.dir.getVm('desk')?.endpoints[0]?.password, secret, 'a record written back without it keeps it');

  const rdpPassword = await api('PUT', '/api/vms/desk/console-password', { token, body: { protocol: 'rdp', password: 'x' } });
  t.same([rdpPassword.status, rdpPassword.body.error?.code], [400, 'ONEPORT_ERR_VALIDATION'], 'RDP endpoints take none');
  const tooLong = await api('PUT', '/api/vms/desk/console-password', { token, body: { protocol: 'vnc', password: 'x'.repeat(61) } });
  t.equal(tooLong.status, 400, 'over 60 bytes refused');
  const set = await api('PUT', '/api/vms/desk/console-password', { token, body: { protocol: 'vnc', password: 'n3w-one' } });
  t.equal(set.status, 200);
  t.notOk(JSON.stringify(set.body).includes('n3w-one'));
  t.equal(gw.ctx.dir.getVm('desk')?.endpoints[0]?.password, 'n3w-one', 'set');
  ok(await api('PUT', '/api/vms/desk/console-password', { token, body: { protocol: 'vnc', password: null } }));
  t.equal(gw.ctx.dir.getVm('desk')?.endpoints[0]?.password, undefined, 'cleared');
  t.notOk(/vnc-s3cret|n3w-one/.test(gw.logText()), 'never logged');
});

t.test('Redis directory: a console password reaches every node\'s mirror (feed and snapshot), is changed compare-and-set, and is cleared', async (t) => {
  const redis = await startRedis(t);
  const prefix = `consolepw${process.pid}:{dir}:`;
  const a = await RedisDirectory.open({ redis: redis.url, prefix });
  t.teardown(() => a.close());
  const b = await RedisDirectory.open({ redis: redis.url, prefix });
  t.teardown(() => b.close());
  await putVm(a, { name: 'desk', node: 'n1', endpoints: [{ protocol: 'spice', host: '127.0.0.1', port: 5930, password: 'in-redis' }] });
  t.equal(await eventually(() => b.getVm('desk')?.endpoints[0]?.password, 10_000, 'the mirror'), 'in-redis', 'another node\'s mirror, from the change feed');
  const late = await RedisDirectory.open({ redis: redis.url, prefix });
  t.teardown(() => late.close());
  t.equal(late.getVm('desk')?.endpoints[0]?.password, 'in-redis', 'a node started later, from the snapshot');
  await setConsolePassword(b, 'desk', { protocol: 'spice', password: 'changed' });
  t.equal(await eventually(() => (a.getVm('desk')?.endpoints[0]?.password === 'changed' ? true : undefined), 10_000, 'the change'), true, 'changed through another node');
  await putVm(a, { name: 'desk', node: 'n1', endpoints: [{ protocol: 'spice', host: '127.0.0.1', port: 5931 }] });
  t.equal(a.getVm('desk')?.endpoints[0]?.password, 'changed', 'a record written without it keeps it');
  await setConsolePassword(a, 'desk', { protocol: 'spice', password: null });
  t.equal(await eventually(() => (b.getVm('desk') && b.getVm('desk')?.endpoints[0]?.password === undefined && b.getVm('desk')?.endpoints[0]?.port === 5931 ? true : undefined), 10_000, 'the clear'), true, 'cleared everywhere');
});
