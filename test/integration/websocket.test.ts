/**
 * WebSocket tunnels (CONTRACT section 4) against a real gateway on loopback, with the `ws` client
 * and, where a well-behaved client cannot do what an attacker would, raw frames over TLS: Origin
 * checks before the upgrade, subprotocol echo, every close code, the payload cap, data sent before
 * the console was dialled, clients that vanish, and ticket brute force.
 */
import t, { type Test } from 'tap';
import tls from 'node:tls';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { WebSocket, type ClientOptions } from 'ws';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { forge, setupDesk, startStreamer } from '../helpers/scenario.js';
import { closedPort, errorCode, rawRequest } from '../helpers/net.js';
import { deadline } from '../helpers/wait.js';
import { closeOf, openWs } from '../helpers/ws.js';
import type { ConfigInput } from '../../gateway/config.js';

async function setup(t: Test, config: ConfigInput = {}) {
  const { gw, echo } = await setupDesk(t, { limits: { wsMaxPayloadBytes: 2048 }, ...config });
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('bobs', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], ['bob']);
  await gw.addVm('dead', [{ protocol: 'vnc', host: '127.0.0.1', port: await closedPort() }], ['alice']);
  return { gw, echo };
}

type Outcome =
  | { kind: 'open' }
  | { kind: 'refused'; status: number; body: string }
  | { kind: 'error'; message: string };

/** How the handshake ended: upgraded, refused with an HTTP status (and its body), or failed. */
function handshake(ws: WebSocket, ms = 5000): Promise<Outcome> {
  const result = new Promise<Outcome>((resolve) => {
    ws.once('open', () => resolve({ kind: 'open' }));
    ws.once('unexpected-response', (_req: unknown, res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ kind: 'refused', status: res.statusCode ?? 0, body }));
      res.on('error', () => resolve({ kind: 'refused', status: res.statusCode ?? 0, body }));
    });
    ws.once('error', (e: Error) => resolve({ kind: 'error', message: e.message }));
  });
  return Promise.race([result, deadline(ms, 'WebSocket handshake')]);
}

/** Sends `data` and collects binary messages until as many bytes came back. */
function echo(ws: WebSocket, data: Buffer, ms = 5000): Promise<Buffer> {
  const result = new Promise<Buffer>((resolve, reject) => {
    const got: Buffer[] = [];
    let n = 0;
    const onMessage = (d: Buffer, isBinary: boolean): void => {
      if (!isBinary) reject(new Error('a text message came back'));
      got.push(d);
      n += d.length;
      if (n >= data.length) {
        ws.removeListener('message', onMessage);
        resolve(Buffer.concat(got));
      }
    };
    ws.on('message', onMessage);
    ws.send(data);
  });
  return Promise.race([result, deadline(ms, 'WebSocket echo')]);
}

async function sessionCookie(gw: TestGateway, user: string, password: string): Promise<string> {
  const body = JSON.stringify({ user, password });
  const r = await rawRequest(
    gw.port,
    `POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    { ca: gw.caCert },
  );
  r.socket.destroy();
  const cookie = /\r\nSet-Cookie: (__Host-oneport_session=[^;\r]+)/i.exec(r.head)?.[1];
  if (r.status !== 200 || !cookie) throw new Error(`login failed: ${r.head}`);
  return cookie;
}

// -------------------------------------------------------------------------------------------
// Raw frames, for what the ws client will not do (send before the 101 arrives).

/** A masked client frame (RFC 6455 section 5.2). */
function clientFrame(payload: Buffer, opcode = 0x2): Buffer {
  let header: Buffer;
  if (payload.length < 126) header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
  else if (payload.length < 65536) {
    header = Buffer.from([0x80 | opcode, 0x80 | 126, 0, 0]);
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  const mask = randomBytes(4);
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] = (masked[i] ?? 0) ^ (mask[i % 4] ?? 0);
  return Buffer.concat([header, mask, masked]);
}

interface Frame {
  opcode: number;
  payload: Buffer;
}

/**
 * Writes an upgrade request with `extra` bytes right behind it in the same write, then reads the
 * response head and server frames until `enough(frames)` or the connection closes.
 */
async function rawUpgrade(gw: TestGateway, path: string, extra: Buffer, enough: (f: Frame[]) => boolean): Promise<{ head: string; frames: Frame[] }> {
  const socket = tls.connect({ port: gw.port, host: '127.0.0.1', servername: 'localhost', ca: gw.caCert });
  socket.on('error', () => {});
  await once(socket, 'secureConnect');
  const request = [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${gw.port}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Protocol: binary',
    '',
    '',
  ].join('\r\n');
  socket.write(Buffer.concat([Buffer.from(request), extra]));
  const result = new Promise<{ head: string; frames: Frame[] }>((resolve) => {
    let buf = Buffer.alloc(0);
    let head: string | undefined;
    const frames: Frame[] = [];
    const finish = (): void => {
      socket.destroy();
      resolve({ head: head ?? buf.toString('latin1'), frames });
    };
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (head === undefined) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        head = buf.subarray(0, end).toString('latin1');
        buf = buf.subarray(end + 4);
      }
      for (;;) {
        if (buf.length < 2) break;
        let len = (buf[1] ?? 0) & 0x7f;
        let off = 2;
        if (len === 126) {
          if (buf.length < 4) break;
          len = buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) break;
          len = Number(buf.readBigUInt64BE(2));
          off = 10;
        }
        if (buf.length < off + len) break;
        frames.push({ opcode: (buf[0] ?? 0) & 0x0f, payload: Buffer.from(buf.subarray(off, off + len)) });
        buf = buf.subarray(off + len);
      }
      if (enough(frames)) finish();
    });
    socket.on('close', finish);
  });
  return Promise.race([result, deadline(5000, `raw upgrade ${path.replace(/\?.*/, '')}`)]);
}

// -------------------------------------------------------------------------------------------

t.test('Origin: a foreign one gets HTTP 403 before the upgrade; own origins, allowedOrigins and none are allowed', async (t) => {
  const { gw, echo: backend } = await setup(t, { http: { allowedOrigins: ['https://portal.example:9443'] } });
  const { ticket } = await gw.ticket('alice', 'desk');
  const path = `/tunnel/desk/vnc?ticket=${ticket}`;
  // From 127.0.0.2: had any of these spent the ticket, 127.0.0.1 could not use it below.
  for (const origin of ['https://evil.example', `https://127.0.0.1:${gw.port + 1}`, `http://127.0.0.1:${gw.port}`, 'https://portal.example', 'null']) {
    const o = await handshake(openWs(t, gw, path, { origin, localAddress: '127.0.0.2' }));
    t.match(o, { kind: 'refused', status: 403 }, `Origin ${origin}: 403`);
    if (o.kind === 'refused') t.equal(errorCode(o.body), 'ONEPORT_ERR_ORIGIN', `Origin ${origin}: ONEPORT_ERR_ORIGIN`);
  }
  t.equal(backend.accepted, 0, 'nothing was dialled for them');
  const allowed: Array<[string, ClientOptions]> = [
    ['same origin as the Host', { origin: `https://127.0.0.1:${gw.port}` }],
    ['a serverNames origin on our port', { origin: `https://localhost:${gw.port}` }],
    ['an http.allowedOrigins entry', { origin: 'https://portal.example:9443' }],
    ['no Origin (not a browser)', {}],
  ];
  for (const [name, opts] of allowed) {
    const ws = openWs(t, gw, path, opts);
    t.match(await handshake(ws), { kind: 'open' }, `${name}: upgraded`);
    t.same(await echo(ws, Buffer.from(name)), Buffer.from(name), `${name}: the tunnel works`);
    ws.close();
  }
});

t.test('Sec-WebSocket-Protocol: binary is echoed', async (t) => {
  const { gw } = await setup(t);
  for (const offered of [['binary'], ['base64x', 'binary']]) {
    const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, {}, offered);
    t.match(await handshake(ws), { kind: 'open' });
    t.equal(ws.protocol, 'binary', `offered ${offered.join(', ')}: binary chosen`);
    ws.close();
  }
  const none = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, {}, []);
  t.match(await handshake(none), { kind: 'open' });
  t.equal(none.protocol, '', 'none offered: none chosen, the tunnel still opens');
  t.same(await echo(none, Buffer.from('x')), Buffer.from('x'));
});

t.test('close codes: 4401, 4004, 4003, 4502', async (t) => {
  const { gw, echo: backend } = await setup(t);
  const cookie = await sessionCookie(gw, 'alice', 'alice-password-1');
  const expectClose = async (name: string, ws: WebSocket, code: number, reason: RegExp): Promise<void> => {
    const c = closeOf(ws);
    t.match(await handshake(ws), { kind: 'open' }, `${name}: upgraded (failures after the upgrade are close codes)`);
    const got = await c;
    t.equal(got.code, code, `${name}: ${code}`);
    t.match(got.reason, reason, `${name}: reason ${got.reason}`);
  };
  await expectClose('no ticket, no cookie', openWs(t, gw, '/tunnel/desk/vnc'), 4401, /ONEPORT_ERR_AUTH_REQUIRED/);
  const { ticket } = await gw.ticket('alice', 'desk');
  await expectClose('forged ticket', openWs(t, gw, `/tunnel/desk/vnc?ticket=${forge(ticket)}`), 4401, /ONEPORT_ERR_TICKET_INVALID/);
  await expectClose('not a ticket at all', openWs(t, gw, '/tunnel/desk/vnc?ticket=%00%01'), 4401, /ONEPORT_ERR_TICKET_INVALID/);
  t.equal(backend.accepted, 0, 'nothing dialled for bad credentials');

  const first = openWs(t, gw, `/tunnel/desk/vnc?ticket=${ticket}`);
  t.match(await handshake(first), { kind: 'open' });
  t.same(await echo(first, Buffer.from('redeemed')), Buffer.from('redeemed'), 'the ticket is redeemed from 127.0.0.1');
  await expectClose('the same ticket from another address', openWs(t, gw, `/tunnel/desk/vnc?ticket=${ticket}`, { localAddress: '127.0.0.2' }), 4401, /ONEPORT_ERR_TICKET_INVALID/);
  first.close();

  await expectClose('unknown protocol in the path', openWs(t, gw, `/tunnel/desk/ssh?ticket=${(await gw.ticket('alice', 'desk')).ticket}`), 4004, /ONEPORT_ERR_NO_SUCH_PROTOCOL/);
  await expectClose('unknown VM, with a session cookie', openWs(t, gw, '/tunnel/nosuch/vnc', { headers: { cookie } }), 4004, /ONEPORT_ERR_UNKNOWN_VM/);
  await expectClose('protocol the VM does not offer, with a session cookie', openWs(t, gw, '/tunnel/desk/rdp', { headers: { cookie } }), 4004, /ONEPORT_ERR_NO_SUCH_PROTOCOL/);
  await expectClose("a VM not assigned to the cookie's user", openWs(t, gw, '/tunnel/bobs/vnc', { headers: { cookie } }), 4003, /ONEPORT_ERR_NOT_ASSIGNED/);
  await expectClose('a forged session cookie', openWs(t, gw, '/tunnel/desk/vnc', { headers: { cookie: `${cookie}x` } }), 4401, /ONEPORT_ERR_SESSION_INVALID/);
  await expectClose('the console refuses', openWs(t, gw, `/tunnel/dead/vnc?ticket=${(await gw.ticket('alice', 'dead')).ticket}`), 4502, /ONEPORT_ERR_CONSOLE_UNREACHABLE/);
  t.equal(backend.accepted, 1, 'only the one good ticket reached a console');

  const ok = openWs(t, gw, '/tunnel/desk/vnc', { headers: { cookie } });
  t.match(await handshake(ok), { kind: 'open' });
  t.same(await echo(ok, Buffer.from('cookie')), Buffer.from('cookie'), 'the session cookie alone opens an assigned VM');
  ok.close();
});

t.test('a message over limits.wsMaxPayloadBytes closes with 1009; one under it is relayed', async (t) => {
  const { gw } = await setup(t);
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`);
  t.match(await handshake(ws), { kind: 'open' });
  const under = randomBytes(2000);
  t.same(await echo(ws, under), under, '2,000 bytes (cap 2,048) are relayed');
  const c = closeOf(ws);
  ws.send(randomBytes(4096));
  t.equal((await c).code, 1009, '4,096 bytes: 1009');
  await Promise.race([gw.ctx.tunnels.whenEmpty(), deadline(5000, 'tunnel still open')]);
  t.equal(gw.ctx.tunnels.size, 0, 'the tunnel is gone');
});

t.test('ws:// in clear text is refused with 400 and spends nothing', async (t) => {
  const { gw, echo: backend } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const o = await handshake(openWs(t, gw, `/tunnel/desk/vnc?ticket=${ticket}`, { localAddress: '127.0.0.2' }, ['binary'], 'ws'));
  t.match(o, { kind: 'refused', status: 400 }, 'HTTP 400');
  if (o.kind === 'refused') t.equal(errorCode(o.body), 'ONEPORT_ERR_BAD_REQUEST');
  t.equal(backend.accepted, 0, 'nothing dialled');
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${ticket}`);
  t.match(await handshake(ws), { kind: 'open' }, 'the ticket still works over wss:// from its owner');
  ws.close();
});

t.test('binary echo both ways, including bytes sent at once and before the console was dialled', async (t) => {
  const { gw } = await setup(t, { limits: { wsMaxPayloadBytes: 2048, preConnectBufferBytes: 4096 } });

  // ws client: three messages sent in the 'open' handler, before anything came back.
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`);
  const early = [Buffer.from('first'), Buffer.from([0, 1, 2, 255, 254]), randomBytes(1500)];
  const got: Buffer[] = [];
  const allBinary: boolean[] = [];
  const want = Buffer.concat(early);
  const arrived = new Promise<void>((resolve) => {
    ws.on('message', (d: Buffer, isBinary: boolean) => {
      got.push(d);
      allBinary.push(isBinary);
      if (Buffer.concat(got).length >= want.length) resolve();
    });
  });
  ws.once('open', () => early.forEach((b) => ws.send(b)));
  t.match(await handshake(ws), { kind: 'open' });
  await Promise.race([arrived, deadline(5000, 'early messages')]);
  ws.removeAllListeners('message');
  t.same(Buffer.concat(got), want, 'messages sent on open come back in order, byte for byte');
  t.ok(allBinary.every(Boolean), 'as binary messages');
  const bulk = randomBytes(200 * 2000);
  const back: Buffer[] = [];
  const bulkDone = new Promise<void>((resolve) => {
    let n = 0;
    ws.on('message', (d: Buffer) => {
      back.push(d);
      n += d.length;
      if (n >= bulk.length) resolve();
    });
  });
  for (let i = 0; i < bulk.length; i += 2000) ws.send(bulk.subarray(i, i + 2000));
  await Promise.race([bulkDone, deadline(10_000, 'bulk echo')]);
  t.ok(Buffer.concat(back).equals(bulk), '400 KB in 200 messages, echoed intact');
  ws.close();

  // Raw: a frame written in the same segment as the upgrade request, before the 101 existed.
  const first = await rawUpgrade(gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, clientFrame(Buffer.from('before-101')), (f) =>
    Buffer.concat(f.filter((x) => x.opcode === 2).map((x) => x.payload)).length >= 10,
  );
  t.match(first.head, /^HTTP\/1\.1 101 /, 'upgraded');
  t.match(first.head, /\r\nSec-WebSocket-Protocol: binary/i);
  t.equal(Buffer.concat(first.frames.filter((x) => x.opcode === 2).map((x) => x.payload)).toString(), 'before-101', 'it reached the console and came back');

  // More than limits.preConnectBufferBytes before the console answered: refused, not buffered.
  const flood = Buffer.concat([0, 1, 2].map(() => clientFrame(randomBytes(2000))));
  const over = await rawUpgrade(gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, flood, (f) => f.some((x) => x.opcode === 8));
  const close = over.frames.find((x) => x.opcode === 8);
  t.ok(close, 'a close frame');
  t.equal(close?.payload.readUInt16BE(0), 1009, '6,000 bytes queued before the console answered (limit 4,096): 1009');
  t.match(close?.payload.subarray(2).toString() ?? '', /ONEPORT_ERR_PAYLOAD_TOO_LARGE/);
  t.notOk(over.frames.some((x) => x.opcode === 2), 'none of it was relayed');
});

t.test('a WebSocket client that vanishes mid-stream: the console leg is closed', async (t) => {
  const gw = await startTestGateway(t);
  const streamer = await startStreamer(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: streamer.port }], ['alice']);
  const consoleSide = streamer.nextConnection();
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`);
  let received = 0;
  const enough = new Promise<void>((resolve) => {
    ws.on('message', (d: Buffer) => {
      received += d.length;
      if (received >= 256 * 1024) resolve();
    });
  });
  t.match(await handshake(ws), { kind: 'open' });
  const backendSocket = await consoleSide;
  const consoleClosed = new Promise<void>((resolve) => backendSocket.once('close', () => resolve()));
  await Promise.race([enough, deadline(5000, 'streaming')]);
  ws.terminate();
  await Promise.race([consoleClosed, deadline(5000, 'the console leg was not closed')]);
  t.pass('the gateway closed the console leg');
  await Promise.race([gw.ctx.tunnels.whenEmpty(), deadline(5000, 'tunnel still registered')]);
  const lines = gw.logs.filter((l) => l.event === 'tunnel');
  t.equal(lines.length, 1);
  t.match(lines[0], { transport: 'websocket', vm: 'desk', closeReason: /^client-(closed|error)$/ });
  t.equal(gw.ctx.tunnels.size, 0);
});

t.test('ticket brute force over WebSocket: after authFailuresPerAddressPerMinute, 1013 with a retry time', async (t) => {
  const { gw } = await setup(t, { limits: { wsMaxPayloadBytes: 2048, authFailuresPerAddressPerMinute: 3 } });
  const codes: number[] = [];
  let last = '';
  for (let i = 0; i < 4; i++) {
    const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${forge((await gw.ticket('alice', 'desk')).ticket)}`);
    const c = closeOf(ws);
    await handshake(ws);
    const r = await c;
    codes.push(r.code);
    last = r.reason;
  }
  t.same(codes, [4401, 4401, 4401, 1013], 'three 4401s, then 1013');
  t.match(JSON.parse(last), { code: 'ONEPORT_ERR_RATE_LIMITED', retryMs: Number }, 'the reason says when to retry');
  const elsewhere = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, { localAddress: '127.0.0.3' });
  t.match(await handshake(elsewhere), { kind: 'open' });
  t.same(await echo(elsewhere, Buffer.from('ok')), Buffer.from('ok'), 'another address is not affected');
  elsewhere.close();
});
