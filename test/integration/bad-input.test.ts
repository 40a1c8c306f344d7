/**
 * Bad input gets a clear answer and leaves nothing behind (issue: core gateway, "Bad input").
 * Real gateway, real sockets; short deadlines through config; events awaited, never slept on.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { WebSocket } from 'ws';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { basic, echoRoundTrip, rawRequest, startBackend } from '../helpers/net.js';

/** Resolves when the server closes `socket`; rejects if it has not within `ms`. */
function closedByServer(socket: net.Socket, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still open after ${ms} ms`)), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.resume();
  });
}

async function counter(gw: TestGateway, result: string): Promise<number> {
  const m = await gw.ctx.metrics.connections.get();
  return m.values.find((v) => v.labels.result === result)?.value ?? 0;
}

async function connected(port: number, localAddress?: string): Promise<net.Socket> {
  const s = net.connect({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) });
  s.on('error', () => {});
  await once(s, 'connect');
  return s;
}

async function setup(t: Test, config = {}) {
  const gw = await startTestGateway(t, config);
  const echo = await startBackend(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], ['alice']);
  return { gw, echo };
}

t.test('garbage first bytes: closed, counted, logged', async (t) => {
  const { gw } = await setup(t);
  for (const garbage of [Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), Buffer.from([0x00, 0xff, 0x13, 0x37]), Buffer.from([0x03, 0x00, 0x00, 0x13])]) {
    const s = await connected(gw.port);
    s.write(garbage);
    await closedByServer(s);
  }
  t.equal(await counter(gw, 'rejected-unrecognised'), 3);
  t.ok(gw.logs.some((l) => l.event === 'connection-rejected'), 'logged');
});

t.test('a silent client is closed at the detection deadline', async (t) => {
  const { gw } = await setup(t, { detect: { timeoutMs: 300 } });
  const s = await connected(gw.port);
  await closedByServer(s, 5000);
  t.equal(await counter(gw, 'rejected-timeout'), 1);
});

t.test('first bytes that never decide are cut at the byte cap', async (t) => {
  const { gw } = await setup(t, { detect: { timeoutMs: 5000, maxBytes: 64 } });
  const s = await connected(gw.port);
  // A PROXY v2 signature announcing a long header keeps every detector at "more".
  s.write(Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a', 'hex'), Buffer.from([0x21, 0x11, 0x01, 0x00]), Buffer.alloc(100)]));
  await closedByServer(s, 3000);
  t.ok((await counter(gw, 'rejected-too-many-bytes')) + (await counter(gw, 'rejected-unrecognised')) >= 1);
});

t.test('slowloris: headers that never finish are cut at the header deadline', async (t) => {
  const { gw } = await setup(t, { http: { headersTimeoutMs: 500, requestTimeoutMs: 1000 } });
  const s = await connected(gw.port);
  s.write('CONNECT desk:5900 HTTP/1.1\r\nX-Slow: a');
  let answer = '';
  s.on('data', (d: Buffer) => (answer += d.toString()));
  await closedByServer(s, 5000);
  t.match(answer, /^(HTTP\/1\.1 408|$)/, 'a 408 or a plain close');
});

t.test('too many headers and oversized headers get 431', async (t) => {
  const { gw } = await setup(t);
  const many = Array.from({ length: 2000 }, (_, i) => `X-H${i}: v`).join('\r\n');
  const r1 = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\n${many}\r\n\r\n`);
  t.equal(r1.status, 431, '2,000 headers');
  const hundred = Array.from({ length: 100 }, (_, i) => `a${i}:b`).join('\r\n');
  const r2 = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\n${hundred}\r\n\r\n`);
  t.equal(r2.status, 431, '100 tiny headers (limit 64)');
  t.equal(JSON.parse(r2.body).error.code, 'ONEPORT_ERR_HEADERS_TOO_LARGE');
  const r3 = await rawRequest(gw.port, `GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'x'.repeat(10 * 1024)}\r\n\r\n`, { ca: gw.caCert });
  t.equal(r3.status, 431, 'one 10 KiB header, inside TLS');
  const r4 = await rawRequest(gw.port, `GET /healthz HTTP/1.1\r\nHost: localhost\r\n${hundred}\r\n\r\n`, { ca: gw.caCert });
  t.equal(r4.status, 431, 'too many headers on an API request');
});

t.test('a console that never answers: 502 after the dial deadline', async (t) => {
  // A listening socket that never accepts, its queue filled: Linux then drops further SYNs.
  const py = spawn('python3', ['-c', [
    'import socket,sys,time',
    's=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(0)',
    'p=s.getsockname()[1]; fill=[]',
    'for i in range(8):',
    '  c=socket.socket(); c.setblocking(False)',
    '  try: c.connect(("127.0.0.1",p))',
    '  except BlockingIOError: pass',
    '  fill.append(c)',
    'print(p, flush=True); time.sleep(120)',
  ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => py.kill('SIGKILL'));
  const [line] = (await once(py.stdout, 'data')) as [Buffer];
  const port = Number(line.toString().trim());
  const gw = await startTestGateway(t, { tunnel: { dialTimeoutMs: 500 } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('hang', [{ protocol: 'vnc', host: '127.0.0.1', port }], ['alice']);
  const { ticket } = await gw.ticket('alice', 'hang');
  const started = Date.now();
  const r = await rawRequest(gw.port, `CONNECT ${ticket}.hang:5900 HTTP/1.1\r\n\r\n`);
  t.equal(r.status, 502);
  t.ok(Date.now() - started >= 450, 'waited for the dial deadline');
  const m = await gw.ctx.metrics.dials.get();
  t.equal(m.values.find((v) => v.labels.result === 'timeout')?.value ?? m.values.find((v) => v.labels.result === 'error')?.value, 1);
});

t.test('a client that vanishes mid-stream: the console leg is closed, nothing leaks', async (t) => {
  const gw = await startTestGateway(t);
  // A console that streams without pause.
  const streamer = await startBackend(t, (s) => {
    const chunk = Buffer.alloc(64 * 1024, 1);
    const pump = (): void => {
      while (!s.destroyed && s.write(chunk));
    };
    s.on('drain', pump);
    pump();
  });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: streamer.port }], ['alice']);
  const r = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: gw.caCert });
  t.equal(r.status, 200);
  const consoleSide = [...streamer.open][0]!;
  const consoleClosed = new Promise((resolve) => consoleSide.once('close', resolve));
  await once(r.socket.resume(), 'data');
  r.socket.destroy();
  await consoleClosed;
  t.pass('the gateway closed the console leg');
  await gw.ctx.tunnels.whenEmpty();
  t.equal(gw.ctx.tunnels.size, 0);
  const line = gw.logs.find((l) => l.event === 'tunnel');
  t.ok(line, 'one log line for the tunnel');
  t.match(line, { user: 'alice', vm: 'desk', protocol: 'vnc', transport: 'connect-tls', closeReason: /client/ });
  t.ok(Number(line?.bytesToClient) > 0, 'bytes counted');
});

t.test('1,000 connections opened and dropped leave nothing behind', async (t) => {
  const { gw } = await setup(t, { detect: { timeoutMs: 2000 } });
  const tcpHandles = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'TCPWRAP').length;
  const before = tcpHandles();
  const partials = [Buffer.from('16030102000100', 'hex'), Buffer.from('CONNECT desk:5900 HTTP/1.1\r\nHo'), Buffer.alloc(0)];
  for (let batch = 0; batch < 10; batch++) {
    await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const s = await connected(gw.port);
        const p = partials[i % partials.length]!;
        if (p.length) s.write(p);
        s.destroy();
        await once(s, 'close');
      }),
    );
  }
  // The gateway notices each close; wait until its gauge says none is open.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = await gw.ctx.metrics.connectionsActive.get();
    if ((m.values[0]?.value ?? 0) === 0) break;
    if (Date.now() > deadline) throw new Error(`connections still open: ${JSON.stringify(m.values)}`);
    await new Promise((r) => setImmediate(r));
  }
  t.ok(tcpHandles() <= before + 2, `TCP handles: ${before} before, ${tcpHandles()} after`);
});

t.test('PROXY protocol only from trusted addresses', async (t) => {
  const trusted = await setup(t, { proxyProtocol: { trusted: ['127.0.0.1'] } });
  const { ticket } = await trusted.gw.ticket('alice', 'desk');
  const ok = await rawRequest(trusted.gw.port, `PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\nCONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  t.equal(ok.status, 200);
  ok.socket.destroy();
  await trusted.gw.ctx.tunnels.whenEmpty();
  t.equal(trusted.gw.logs.find((l) => l.event === 'tunnel')?.client, '192.0.2.10', 'the log names the real client');
  const v2 = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a21110000c000020bc63364010fa001bb'.replace('0000', '000c'), 'hex')]);
  const t2 = await trusted.gw.ticket('alice', 'desk');
  const okV2 = await rawRequest(trusted.gw.port, Buffer.concat([v2, Buffer.from(`CONNECT ${t2.ticket}.desk:5900 HTTP/1.1\r\n\r\n`)]));
  t.equal(okV2.status, 200, 'PROXY v2');
  okV2.socket.destroy();
  const fromOther = await connected(trusted.gw.port, '127.0.0.2');
  fromOther.write('PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n');
  await closedByServer(fromOther);
  t.pass('a PROXY header from an untrusted address closes the connection');
  const none = await setup(t);
  const s = await connected(none.gw.port);
  s.write('PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n');
  await closedByServer(s);
  t.equal(await counter(none.gw, 'rejected-proxy-untrusted'), 1);
});

t.test('limits: connections per address (429), failed tickets per address (429)', async (t) => {
  const { gw } = await setup(t, { limits: { maxConnectionsPerAddress: 2, authFailuresPerAddressPerMinute: 3 } });
  const open: net.Socket[] = [];
  t.teardown(() => open.forEach((s) => s.destroy()));
  for (let i = 0; i < 2; i++) {
    const { ticket } = await gw.ticket('alice', 'desk');
    const r = await rawRequest(gw.port, `CONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
    t.equal(r.status, 200);
    open.push(r.socket as net.Socket);
  }
  const { ticket } = await gw.ticket('alice', 'desk');
  const third = await rawRequest(gw.port, `CONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  t.equal(third.status, 429, 'third connection from 127.0.0.1');
  t.match(third.head, /Retry-After: \d+/);
  const other = await rawRequest(gw.port, `CONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`, { localAddress: '127.0.0.3' });
  t.not(other.status, 429, 'another address is not limited');
  const forged = 'c'.repeat(50);
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) {
    const r = await rawRequest(gw.port, `CONNECT ${forged}.desk:5900 HTTP/1.1\r\n\r\n`, { localAddress: '127.0.0.4' });
    statuses.push(r.status);
  }
  t.same(statuses, [407, 407, 407, 429], 'forged tickets: three tries, then 429');
});

t.test('WebSocket: origin, subprotocol, close codes, payload cap', async (t) => {
  const { gw, echo } = await setup(t, { limits: { wsMaxPayloadBytes: 2048 } });
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('bobs', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], ['bob']);
  const url = (path: string): string => `wss://localhost:${gw.port}${path}`;
  const open = async (path: string, opts: Record<string, unknown> = {}): Promise<WebSocket> => {
    const ws = new WebSocket(url(path), ['binary'], { ca: gw.caCert, ...opts });
    ws.on('error', () => {});
    t.teardown(() => ws.terminate());
    return ws;
  };
  const closeCode = async (ws: WebSocket): Promise<number> => ((await once(ws, 'close')) as [number])[0];

  const foreign = await open(`/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, { origin: 'https://evil.example' });
  const [, res] = (await once(foreign, 'unexpected-response')) as [unknown, { statusCode: number }];
  t.equal(res.statusCode, 403, 'a foreign Origin is refused before the upgrade');
  t.equal(echo.accepted, 0);

  const same = await open(`/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, { origin: `https://localhost:${gw.port}` });
  await once(same, 'open');
  t.equal(same.protocol, 'binary', 'binary echoed');
  same.send(Buffer.from('sent-right-after-open'));
  const [msg] = (await once(same, 'message')) as [Buffer];
  t.equal(msg.toString(), 'sent-right-after-open', 'bytes sent before the console was dialled arrive');
  same.close();

  t.equal(await closeCode(await open('/tunnel/desk/vnc')), 4401, 'no ticket');
  t.equal(await closeCode(await open(`/tunnel/desk/vnc?ticket=${'d'.repeat(50)}`)), 4401, 'forged ticket');
  const used = (await gw.ticket('alice', 'desk')).ticket;
  const first = await open(`/tunnel/desk/vnc?ticket=${used}`);
  await once(first, 'open');
  t.equal(await closeCode(await open(`/tunnel/desk/vnc?ticket=${used}`, { localAddress: '127.0.0.2' })), 4401, 'reused from another address');
  t.equal(await closeCode(await open(`/tunnel/desk/ssh?ticket=${used}`)), 4004, 'unknown protocol');
  const login = await rawRequest(gw.port, `POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 46\r\n\r\n{"user":"alice","password":"alice-password-1"}`, { ca: gw.caCert });
  const cookie = /Set-Cookie: ([^;]+)/i.exec(login.head)?.[1] ?? '';
  t.ok(cookie, 'logged in');
  t.equal(await closeCode(await open('/tunnel/nosuch/vnc', { headers: { cookie } })), 4004, 'unknown VM with a session');
  t.equal(await closeCode(await open('/tunnel/bobs/vnc', { headers: { cookie } })), 4003, 'not assigned');
  const big = await open('/tunnel/desk/vnc', { headers: { cookie } });
  await once(big, 'open');
  big.send(Buffer.alloc(4096));
  t.equal(await closeCode(big), 1009, 'message over the payload cap');
  first.close();
  const clear = await rawRequest(gw.port, 'GET /tunnel/desk/vnc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  t.equal(clear.status, 400, 'ws:// in clear text is refused');
});

t.test('WebSocket: the console refuses -> 4502', async (t) => {
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  const dead = net.createServer();
  dead.listen(0, '127.0.0.1');
  await once(dead, 'listening');
  const port = (dead.address() as net.AddressInfo).port;
  await new Promise<void>((r) => dead.close(() => r()));
  await gw.addVm('dead', [{ protocol: 'vnc', host: '127.0.0.1', port }], ['alice']);
  const ws = new WebSocket(`wss://localhost:${gw.port}/tunnel/dead/vnc?ticket=${(await gw.ticket('alice', 'dead')).ticket}`, { ca: gw.caCert });
  ws.on('error', () => {});
  const [code] = (await once(ws, 'close')) as [number];
  t.equal(code, 4502);
});

t.test('TLS: 1.2 minimum, ALPN http/1.1, SNI picks the certificate, stalled handshakes are cut', async (t) => {
  const { createCa, issueServerCert } = await import('../../certs/ca.js');
  const ca = createCa();
  const a = issueServerCert(ca, ['a.test']);
  const b = issueServerCert(ca, ['b.test']);
  const dir = t.testdir({ 'a.pem': a.cert, 'a-key.pem': a.key, 'b.pem': b.cert, 'b-key.pem': b.key });
  const gw = await startTestGateway(t, {
    tls: { certificates: [{ cert: `${dir}/a.pem`, key: `${dir}/a-key.pem` }, { cert: `${dir}/b.pem`, key: `${dir}/b-key.pem` }], handshakeTimeoutMs: 500 },
  });
  const hello = async (servername: string, extra: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> => {
    const s = tls.connect({ port: gw.port, host: '127.0.0.1', servername, ca: ca.cert, ALPNProtocols: ['http/1.1'], ...extra });
    s.on('error', () => {});
    t.teardown(() => s.destroy());
    await once(s, 'secureConnect');
    return s;
  };
  const sb = await hello('b.test');
  t.equal(sb.getPeerCertificate().subject.CN, 'b.test', 'SNI b.test');
  t.equal(sb.alpnProtocol, 'http/1.1');
  t.equal((await hello('a.test')).getPeerCertificate().subject.CN, 'a.test', 'SNI a.test');
  t.equal((await hello('other.test', { checkServerIdentity: () => undefined })).getPeerCertificate().subject.CN, 'a.test', 'unknown names get the first');
  const old = tls.connect({ port: gw.port, host: '127.0.0.1', servername: 'a.test', ca: ca.cert, maxVersion: 'TLSv1.1', minVersion: 'TLSv1' });
  const [err] = (await once(old, 'error')) as [Error];
  t.ok(err, `TLS 1.1 refused: ${err.message}`);
  const stall = await connected(gw.port);
  // A record header and the start of a ClientHello: detected as TLS, then nothing more.
  stall.write(Buffer.from('160301020001', 'hex'));
  await closedByServer(stall, 5000);
  t.pass('a stalled handshake is cut');
});

t.test('graceful stop: no new connections, open tunnels drain, then close (WebSocket gets 1001)', async (t) => {
  const { gw } = await setup(t);
  const r = await rawRequest(gw.port, `CONNECT ${(await gw.ticket('alice', 'desk')).ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  t.equal(r.status, 200);
  const ws = new WebSocket(`wss://localhost:${gw.port}/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, { ca: gw.caCert });
  ws.on('error', () => {});
  await once(ws, 'open');
  const wsClosed = once(ws, 'close');
  const tunnelClosed = once(r.socket, 'close');
  const closing = gw.close({ drainMs: 1500 });
  const refused = net.connect(gw.port, '127.0.0.1');
  const [e] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
  t.equal(e.code, 'ECONNREFUSED', 'no new connections');
  t.same(await echoRoundTrip(r.socket, Buffer.from('still here')), Buffer.from('still here'), 'open tunnels work during the drain');
  const [code] = (await wsClosed) as [number];
  t.equal(code, 1001, 'WebSocket told the gateway is going away');
  await tunnelClosed;
  await closing;
  t.equal(gw.ctx.tunnels.size, 0);
});

t.test('idle tunnels are closed; half-close passes the FIN and the reply still arrives', async (t) => {
  const gw = await startTestGateway(t, { tunnel: { idleTimeoutMs: 300 } });
  // Reads everything until FIN, then answers with the byte count and closes.
  const counter = await startBackend(t, (s) => {
    let n = 0;
    s.on('data', (d: Buffer) => (n += d.length));
    s.on('end', () => s.end(`got ${n}`));
  });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: counter.port }], ['alice']);
  const idle = await rawRequest(gw.port, `CONNECT ${(await gw.ticket('alice', 'desk')).ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  await closedByServer(idle.socket as net.Socket, 5000);
  await gw.ctx.tunnels.whenEmpty();
  t.equal(gw.logs.find((l) => l.event === 'tunnel')?.closeReason, 'idle');

  const half = await rawRequest(gw.port, `CONNECT ${(await gw.ticket('alice', 'desk')).ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  let reply = '';
  half.socket.on('data', (d: Buffer) => (reply += d.toString()));
  half.socket.resume();
  half.socket.end(Buffer.alloc(1000, 1));
  await once(half.socket, 'close');
  t.equal(reply, 'got 1000', 'the console saw all 1000 bytes and the FIN, and its answer came back');
});

t.test('limits.maxConnections: connections beyond it are dropped and counted', async (t) => {
  const { gw } = await setup(t, { limits: { maxConnections: 3 } });
  const held: net.Socket[] = [];
  t.teardown(() => held.forEach((s) => s.destroy()));
  for (let i = 0; i < 3; i++) held.push(await connected(gw.port));
  const extra = await connected(gw.port);
  await closedByServer(extra, 5000);
  t.equal(await counter(gw, 'dropped-max-connections'), 1);
  held.shift()!.destroy();
  // A slot is free again once the gateway has seen the close.
  const deadline = Date.now() + 5000;
  for (;;) {
    const m = await gw.ctx.metrics.connectionsActive.get();
    if ((m.values[0]?.value ?? 0) <= 2) break;
    if (Date.now() > deadline) throw new Error('the closed connection was never released');
    await new Promise((r) => setImmediate(r));
  }
  const again = await rawRequest(gw.port, `CONNECT ${(await gw.ticket('alice', 'desk')).ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  t.equal(again.status, 200, 'served again below the limit');
  again.socket.destroy();
});

t.test('WebSocket keep-alive: a client that stops answering pings is dropped', async (t) => {
  const { gw, echo } = await setup(t, { tunnel: { wsPingIntervalMs: 200 } });
  const ws = new WebSocket(`wss://localhost:${gw.port}/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, {
    ca: gw.caCert,
    autoPong: false,
  });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  const consoleSide = echo.open.size > 0 ? [...echo.open][0]! : await echo.nextConnection();
  const pinged = once(ws, 'ping');
  const [code] = (await once(ws, 'close')) as [number];
  await pinged;
  t.equal(code, 1006, 'the gateway cut the silent client');
  await new Promise((resolve) => consoleSide.once('close', resolve));
  t.pass('and closed its console leg');
});
