/**
 * The RD Gateway entrance (MS-TSGU over HTTP) against a real gateway on loopback, with raw
 * sockets playing FreeRDP 2.11.7's side: both transports end to end through an echo console, and
 * every way a client can get it wrong or lie: forged, expired, replayed and cross-VM tickets
 * (refused at once, never a dial), hostile packets, frames and chunks (bad lengths, wrong order,
 * huge fields), unpaired halves and silence (refused within their deadlines, memory bounded).
 */
import t, { type Test } from 'tap';
import { HResult } from '../../protocols/tsgu.js';
import { Opcode, encodeClientFrame } from '../../protocols/websocket-frame.js';
import fc from 'fast-check';
import { mintTicket } from '../../gateway/auth/tickets.js';
import { fuzz } from '../helpers/fuzz.js';
import {
  FREERDP_TSGU_CHANNEL_CREATE, FREERDP_TSGU_DATA_CR, FREERDP_TSGU_HANDSHAKE, FREERDP_TSGU_TUNNEL_AUTH, FREERDP_TSGU_TUNNEL_CREATE,
} from '../fixtures/rdp-packets.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startBackend, type Backend } from '../helpers/net.js';
import { forge } from '../helpers/scenario.js';
import { until } from '../helpers/wait.js';
import { streamQueue } from '../helpers/bytes.js';
import { type RdgClient, RdgLegacyClient, RdgWebSocketClient, readHead, rdgRequest, tlsTo } from '../helpers/rdg.js';
import type { ConfigInput } from '../../gateway/config.js';

interface Scene {
  gw: TestGateway;
  echo: Backend;
  other: Backend;
}

async function scene(t: Test, config: ConfigInput = {}): Promise<Scene> {
  const gw = await startTestGateway(t, config);
  const echo = await startBackend(t);
  const other = await startBackend(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: echo.port, publishedPort: 3389 }], ['alice']);
  await gw.addVm('win2', [{ protocol: 'rdp', host: '127.0.0.1', port: other.port, publishedPort: 3390 }], ['alice']);
  return { gw, echo, other };
}

const transports = {
  'rdg-ws': (gw: TestGateway): Promise<RdgClient> => RdgWebSocketClient.connect(gw.port, gw.caCert),
  'rdg-http': (gw: TestGateway): Promise<RdgClient> => RdgLegacyClient.connect([gw.port, gw.port], gw.caCert),
} as const;

for (const [transport, connect] of Object.entries(transports)) {
  t.test(`${transport}: ticket as PAA cookie, channel to the VM's RDP console, data both ways, close`, async (t) => {
    const { gw, echo } = await scene(t);
    const { ticket } = await gw.ticket('alice', 'win', 'rdp');
    const c = await connect(gw);
    t.teardown(() => c.destroy());
    const channel = await c.open(ticket, 'win');
    t.match(channel, { type: 'channel-response', errorCode: 0 }, 'channel opened');
    t.equal(echo.accepted, 1, 'the console was dialled once');
    const big = Buffer.alloc(200_000, 0x41);
    big.write('hello', 0);
    // The client's DATA packets carry at most 65535 bytes each.
    for (let at = 0; at < big.length; at += 0xffff) c.send({ type: 'data', data: big.subarray(at, at + 0xffff) });
    t.same(await c.readData(big.length), big, 'the console echoed 200 kB, framed as DATA packets');
    c.send({ type: 'keepalive' });
    c.send({ type: 'close-channel', statusCode: 0 });
    t.match(await c.next(), { type: 'close-channel-response', statusCode: 0 }, 'close answered');
    await c.closed();
    await until(() => gw.logs.some((l) => l.event === 'tunnel'));
    const line = gw.logs.find((l) => l.event === 'tunnel')!;
    t.match(line, { vm: 'win', protocol: 'rdp', transport, user: 'alice', via: 'ticket' }, 'the tunnel log line names the transport');
    t.ok(Number(line.bytesToConsole) >= big.length, 'bytes counted');
    t.notMatch(gw.logText(), ticket, 'the ticket never reaches the log');
    const m = await gw.ctx.metrics.tunnels.get();
    t.ok(m.values.some((v) => v.labels.transport === transport && v.labels.result === 'ok'), 'oneport_tunnels_total names the transport');
  });

  t.test(`${transport}: the console closing ends the channel with CLOSE_CHANNEL`, async (t) => {
    const gw = await startTestGateway(t);
    const closer = await startBackend(t, (s) => s.end('bye'));
    await gw.addUser('alice', 'alice-password-1');
    await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: closer.port, publishedPort: 3389 }], ['alice']);
    const { ticket } = await gw.ticket('alice', 'win', 'rdp');
    const c = await connect(gw);
    t.teardown(() => c.destroy());
    t.match(await c.open(ticket, 'win'), { type: 'channel-response', errorCode: 0 });
    t.same(await c.readData(3), Buffer.from('bye'));
    t.match(await c.next(), { type: 'close-channel' }, 'the gateway closes the channel');
    c.send({ type: 'close-channel-response', statusCode: 0 });
    await c.closed();
  });

  t.test(`${transport}: forged, expired, replayed, cross-VM and garbage cookies are refused at once, with no dial`, async (t) => {
    const { gw, echo, other } = await scene(t, { auth: { ticketReuseMs: 0 } });
    const refusedWith = async (cookie: string, vm: string, code: number, what: string): Promise<void> => {
      const c = await connect(gw);
      t.teardown(() => c.destroy());
      const started = Date.now();
      const answer = await c.open(cookie, vm);
      const got = answer.type === 'tunnel-response' ? answer.statusCode : 'errorCode' in answer ? answer.errorCode : undefined;
      t.equal(got, code, `${what}: refused in the ${answer.type}`);
      t.ok(Date.now() - started < 2000, `${what}: at once`);
      await c.closed();
    };
    const { ticket } = await gw.ticket('alice', 'win', 'rdp');
    await refusedWith(forge(ticket), 'win', HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED, 'forged');
    const expired = mintTicket(gw.ctx.dir.keys(), 'win', 'rdp', 1000, Date.now() - 120_000).ticket;
    await refusedWith(expired, 'win', HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED, 'expired');
    await refusedWith(ticket, 'win2', HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED, 'cross-VM (a ticket for win, channel to win2)');
    const vnc = await gw.ticket('alice', 'win', 'rdp');
    t.equal(echo.accepted + other.accepted, 0, 'no console was dialled');
    // Used once for real, then replayed.
    const c = await connect(gw);
    t.teardown(() => c.destroy());
    t.match(await c.open(vnc.ticket, 'win'), { type: 'channel-response', errorCode: 0 });
    c.destroy();
    await refusedWith(vnc.ticket, 'win', HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED, 'replayed');
    t.equal(echo.accepted, 1, 'only the real use dialled');
    // Not a ticket at all: refused in the tunnel response already.
    const g = await connect(gw);
    t.teardown(() => g.destroy());
    g.send({ type: 'handshake-request', versionMajor: 1, versionMinor: 0, clientVersion: 0, extendedAuth: 2 });
    t.match(await g.next(), { type: 'handshake-response', errorCode: 0 });
    g.send({ type: 'tunnel-create', capabilities: 0, paaCookie: Buffer.from('not a ticket\0', 'utf16le') });
    t.match(await g.next(), { type: 'tunnel-response', statusCode: HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED }, 'garbage cookie: refused at tunnel create');
    await g.closed();
    t.ok(gw.logs.some((l) => l.event === 'tunnel-refused' && l.transport === transport && l.code === 'ONEPORT_ERR_TICKET_INVALID'), 'refusals are logged with the transport');
  });

  t.test(`${transport}: the resource is a VM name: addresses and unknown names never reach a dial`, async (t) => {
    const { gw, echo, other } = await scene(t);
    for (const [vm, code] of [
      ['127.0.0.1', HResult.E_PROXY_RAP_ACCESSDENIED],
      ['nosuchvm', HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED],
    ] as const) {
      const { ticket } = await gw.ticket('alice', 'win', 'rdp');
      const c = await connect(gw);
      t.teardown(() => c.destroy());
      t.match(await c.open(ticket, vm), { type: 'channel-response', errorCode: code }, `${vm}: refused`);
      await c.closed();
    }
    // A port the VM does not publish.
    const { ticket } = await gw.ticket('alice', 'win', 'rdp');
    const c = await connect(gw);
    t.teardown(() => c.destroy());
    t.match(await c.open(ticket, 'win', 22), { type: 'channel-response', errorCode: HResult.E_PROXY_RAP_ACCESSDENIED }, 'port 22: refused');
    t.equal(echo.accepted + other.accepted, 0, 'nothing was dialled');
  });
}

t.test('rdg-ws: FreeRDP\'s non-base64 key, pings answered, bad frames closed with the right code', async (t) => {
  const { gw, echo } = await scene(t);
  const c = await RdgWebSocketClient.connect(gw.port, gw.caCert, 'XQHSK^AWR^PUAS]');
  t.teardown(() => c.destroy());
  t.equal(c.upgrade.status, 101, '101 for a key that is not base64');
  c.sendFrame(encodeClientFrame(Opcode.PING, Buffer.from('p1')));
  t.same(await c.frame(), { opcode: Opcode.PONG, payload: Buffer.from('p1') }, 'ping answered with its payload');
  const cases: Array<[string, Buffer, number]> = [
    ['unmasked frame', Buffer.from([0x82, 0x02, 0x01, 0x02]), 1002],
    ['text frame', encodeClientFrame(Opcode.TEXT, Buffer.from('hi')), 1003],
    ['1 MiB frame', Buffer.concat([Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0]), Buffer.alloc(4)]), 1009],
    ['reserved bits', Buffer.from([0xc2, 0x80, 0, 0, 0, 0]), 1002],
  ];
  for (const [what, frame, code] of cases) {
    const w = await RdgWebSocketClient.connect(gw.port, gw.caCert);
    t.teardown(() => w.destroy());
    w.sendFrame(frame);
    const f = await w.frame();
    t.equal(f.opcode, Opcode.CLOSE, `${what}: closed`);
    t.equal(f.payload.readUInt16BE(0), code, `${what}: close ${code}`);
    await w.closed();
  }
  t.equal(echo.accepted, 0, 'nothing was dialled');
});

t.test('hostile MS-TSGU packets: bad lengths, wrong order, huge fields: closed, never a dial', async (t) => {
  const { gw, echo } = await scene(t);
  const hs = Buffer.from('01000000 0e000000 01 00 0000 0200'.replace(/ /g, ''), 'hex');
  const cases: Array<[string, Buffer]> = [
    ['packet length below the header', Buffer.from('0100000004000000', 'hex')],
    ['packet length 4 GiB', Buffer.from('01000000ffffffff', 'hex')],
    ['packet length 70000', Buffer.from('0100000070110100', 'hex')],
    ['channel create first', Buffer.from('0800 0000 1c000000 01 00 3d0d 0300 0c00 770069006e00310030000000'.replace(/ /g, ''), 'hex')],
    ['data before the channel', Buffer.concat([hs, Buffer.from('0a000000 0d000000 0300 616263'.replace(/ /g, ''), 'hex')])],
    ['handshake twice', Buffer.concat([hs, hs])],
    ['channel create with 51 resources', Buffer.concat([hs, Buffer.from('08000000 0e000000 33 00 3d0d 0300'.replace(/ /g, ''), 'hex')])],
    ['a string longer than its packet', Buffer.concat([hs, Buffer.from('06000000 0c000000 0000 ff00'.replace(/ /g, ''), 'hex')])],
  ];
  for (const [transport, connect] of Object.entries(transports)) {
    for (const [what, bytes] of cases) {
      const c = await connect(gw);
      t.teardown(() => c.destroy());
      const started = Date.now();
      c.sendBytes(bytes);
      // Whatever the gateway answered first (a handshake response), it then closes.
      await t.resolves(c.closed(5000), `${transport}: ${what}: closed`);
      t.ok(Date.now() - started < 3000, `${transport}: ${what}: at once`);
    }
  }
  // The legacy IN body's own framing: a chunk size over 64 KiB is refused before its data is awaited.
  for (const [what, raw] of [['a 1 GiB chunk', '40000000\r\n'], ['a chunk size that is not hex', 'zz\r\n'], ['a chunk without its CRLF', '1\r\nAB']] as const) {
    const c = await RdgLegacyClient.connect([gw.port, gw.port], gw.caCert);
    t.teardown(() => c.destroy());
    c.inSocket.write(raw);
    await t.resolves(c.closed(3000), `rdg-http: ${what}: closed at once`);
  }
  t.equal(echo.accepted, 0, 'nothing was dialled');
  const m = await gw.ctx.metrics.tunnels.get();
  t.ok(m.values.some((v) => v.labels.transport === 'rdg-ws' && v.labels.result === 'ONEPORT_ERR_BAD_REQUEST'), 'counted as bad requests');
});

t.test('silence and unpaired halves end within their deadlines; the unpaired cap holds', async (t) => {
  const { gw } = await scene(t, { rdg: { setupTimeoutMs: 800, pairTimeoutMs: 600, maxUnpaired: 2 } });
  // Upgraded, then silent: the handshake answer says no, then the connection closes.
  const silent = await RdgWebSocketClient.connect(gw.port, gw.caCert);
  t.teardown(() => silent.destroy());
  const started = Date.now();
  t.match(await silent.next(3000), { type: 'handshake-response' }, 'silence is answered');
  await silent.closed(3000);
  t.ok(Date.now() - started < 2500, 'within rdg.setupTimeoutMs');

  // A request head that never ends.
  const slow = await tlsTo(gw.port, gw.caCert);
  t.teardown(() => slow.destroy());
  slow.write('RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: x\r\n');
  await t.resolves(streamQueue(slow).rest(3000), 'an unfinished head is cut');

  // OUT halves that never get their IN.
  const outs = [];
  for (let i = 0; i < 2; i++) {
    const s = await tlsTo(gw.port, gw.caCert);
    t.teardown(() => s.destroy());
    s.write(rdgRequest('RDG_OUT_DATA', `0000000${i}-0000-0000-0000-000000000000`, ['Content-Length: 0']));
    const q = streamQueue(s);
    t.equal((await readHead(q)).status, 200, `OUT ${i} answered`);
    outs.push(q);
  }
  const third = await tlsTo(gw.port, gw.caCert);
  t.teardown(() => third.destroy());
  third.write(rdgRequest('RDG_OUT_DATA', '00000009-0000-0000-0000-000000000000', ['Content-Length: 0']));
  t.equal((await readHead(streamQueue(third))).status, 429, 'over rdg.maxUnpaired: 429');
  for (const q of outs) {
    const body = (await q.rest(3000)).toString('latin1');
    t.ok(body.endsWith('0\r\n\r\n'), 'an unpaired OUT ends its body at the pairing deadline');
  }

  // An IN whose OUT never comes.
  const lone = await tlsTo(gw.port, gw.caCert);
  t.teardown(() => lone.destroy());
  lone.write(rdgRequest('RDG_IN_DATA', '0000000a-0000-0000-0000-000000000000', ['Transfer-Encoding: chunked']));
  t.equal((await readHead(streamQueue(lone), 3000)).status, 404, 'an IN without OUT: 404 at the deadline');
});

t.test('bad RD Gateway requests get HTTP answers; other HTTPS is untouched', async (t) => {
  const { gw } = await scene(t);
  const ask = async (request: string): Promise<number> => {
    const s = await tlsTo(gw.port, gw.caCert);
    t.teardown(() => s.destroy());
    s.write(request);
    return (await readHead(streamQueue(s))).status;
  };
  t.equal(await ask('RDG_OUT_DATA /elsewhere/ HTTP/1.1\r\nHost: x\r\n\r\n'), 404, 'wrong path');
  t.equal(await ask('RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: x\r\n\r\n'), 400, 'legacy OUT without RDG-Connection-Id');
  t.equal(await ask('RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n'), 400, 'both body framings');
  t.equal(await ask(`RDG_IN_DATA /remoteDesktopGateway/ HTTP/1.1\r\nOneport-Hop: n2\r\nOneport-Client: 10.0.0.1\r\nRDG-Connection-Id: x\r\nTransfer-Encoding: chunked\r\n\r\n`), 403, 'a relayed request from a non-node');
  t.equal(await ask(`RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\n${'X-A: b\r\n'.repeat(2000)}\r\n`), 431, 'head too large');
  t.equal(await ask('GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'), 200, 'HTTPS requests still reach the HTTP server');
  t.equal(await ask('RDG_X / HTTP/1.1\r\n\r\n'), 400, 'a method that starts like RDG_ but is none goes to the HTTP server (400)');
});

t.test('property: any mix of FreeRDP packets, forged headers and junk, on either transport: closed in time, never a dial, never a bug', async (t) => {
  const { gw, echo } = await scene(t, { rdg: { setupTimeoutMs: 1500 } });
  const fixtures = [FREERDP_TSGU_HANDSHAKE, FREERDP_TSGU_TUNNEL_CREATE, FREERDP_TSGU_TUNNEL_AUTH, FREERDP_TSGU_CHANNEL_CREATE, FREERDP_TSGU_DATA_CR];
  const piece = fc.oneof(
    fc.constantFrom(...fixtures),
    fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
    // A header whose type and length are anything, then a few bytes.
    fc.tuple(fc.integer({ min: 0, max: 0x20 }), fc.integer({ min: 0, max: 0xffffffff }), fc.uint8Array({ maxLength: 16 })).map(([type, length, body]) => {
      const h = Buffer.alloc(8);
      h.writeUInt16LE(type, 0);
      h.writeUInt32LE(length, 4);
      return Buffer.concat([h, body]);
    }),
  );
  await fc.assert(
    fc.asyncProperty(fc.constantFrom('rdg-ws', 'rdg-http'), fc.array(piece, { minLength: 1, maxLength: 6 }), async (transport, pieces) => {
      const c = await transports[transport as keyof typeof transports](gw);
      try {
        for (const p of pieces) c.sendBytes(p);
        await c.closed(5000);
      } finally {
        c.destroy();
      }
    }),
    { ...fuzz(40), endOnFailure: true },
  );
  t.equal(echo.accepted, 0, 'nothing was dialled');
  t.notOk(gw.logs.some((l) => Number(l.level) >= 50), 'nothing was logged at error level');
  const internal = await gw.ctx.metrics.internalErrors.get();
  t.equal(internal.values.reduce((n, v) => n + v.value, 0), 0, 'no handler failed');
});

t.test('a live RD Gateway tunnel ends with CLOSE_CHANNEL and its reason: access revoked (both transports), shutdown', async (t) => {
  const { gw } = await scene(t);
  const open = async (): Promise<RdgClient> => {
    const { ticket } = await gw.ticket('alice', 'win', 'rdp');
    const c = await RdgWebSocketClient.connect(gw.port, gw.caCert);
    t.teardown(() => c.destroy());
    t.match(await c.open(ticket, 'win'), { type: 'channel-response', errorCode: 0 });
    return c;
  };
  const revoked = await open();
  const legacy = await RdgLegacyClient.connect([gw.port, gw.port], gw.caCert);
  t.teardown(() => legacy.destroy());
  t.match(await legacy.open((await gw.ticket('alice', 'win', 'rdp')).ticket, 'win'), { type: 'channel-response', errorCode: 0 });
  const vm = gw.ctx.dir.getVm('win')!;
  await gw.ctx.dir.putVm({ ...vm, users: [] });
  for (const [what, c] of [['rdg-ws', revoked], ['rdg-http', legacy]] as const) {
    t.match(await c.next(), { type: 'close-channel', statusCode: HResult.E_PROXY_RAP_ACCESSDENIED }, `${what}: unassigned: CLOSE_CHANNEL, RAP access denied`);
    c.send({ type: 'close-channel-response', statusCode: 0 });
    await c.closed();
  }
  await gw.ctx.dir.putVm(vm);
  const last = await open();
  const closing = gw.close({ drainMs: 0 });
  t.match(await last.next(), { type: 'close-channel', statusCode: HResult.E_PROXY_CONNECTIONABORTED }, 'shutdown: CLOSE_CHANNEL, connection aborted');
  await last.closed();
  await closing;
});
