/**
 * Hostile and broken clients against a real gateway on loopback: garbage and silence on the one
 * port, bytes that never decide, slowloris, consoles that never answer, clients that vanish,
 * connection churn, TLS downgrades and stalled handshakes, graceful stop, half-close.
 *
 * Every test sets its deadlines small through config and awaits events (a socket's 'close', a
 * response); timers only bound how long a test waits before it fails. Each assertion is one that
 * fails when the protection it names is missing: e.g. the detection tests run with the other
 * deadline set far away, so only the protection under test can close the connection in time.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { clearConnect, connectionCount, setupDesk, startStreamer } from '../helpers/scenario.js';
import { basic, closedWithin, connectRaw, echoRoundTrip, rawRequest } from '../helpers/net.js';
import { deadline, until } from '../helpers/wait.js';
import { opened, openWs } from '../helpers/ws.js';
import { createCa, issueServerCert } from '../../certs/ca.js';
import * as F from '../fixtures/packets.js';

/** A deadline far beyond any test's own: a protection that relies on it would make the test fail. */
const FAR = 60_000;

async function gauge(g: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await g.get()).values.reduce((sum, v) => sum + v.value, 0);
}

async function tlsFailures(gw: TestGateway): Promise<number> {
  return gauge(gw.ctx.metrics.tlsErrors);
}

/** The first of `events` that `emitter` emits, with its arguments; never rejects (unlike events.once on 'error'). */
function firstOf(emitter: NodeJS.EventEmitter, events: string[]): Promise<[string, ...unknown[]]> {
  return new Promise((resolve) => {
    const handlers = events.map((name) => {
      const h = (...args: unknown[]): void => {
        events.forEach((n, i) => emitter.removeListener(n, handlers[i]!));
        resolve([name, ...args]);
      };
      emitter.on(name, h);
      return h;
    });
  });
}

// -------------------------------------------------------------------------------------------
// First bytes (CONTRACT section 1)

t.test('garbage first bytes: closed at once, counted as rejected-unrecognised, logged', async (t) => {
  // The detection deadline is far away: only recognising garbage as garbage closes these in time.
  // Native RDP turned off: TPKT is then garbage like any other (test/integration/native-rdp.test.ts has it on).
  const { gw } = await setupDesk(t, { detect: { timeoutMs: FAR }, nativeRdp: { enabled: false } });
  const garbage: Array<[string, Buffer]> = [
    ['SSH banner', Buffer.from('SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n')],
    ['random bytes', Buffer.concat([Buffer.from([0xff]), randomBytes(63)])],
    ['native RDP (TPKT) with nativeRdp.enabled false', Buffer.from('0300002b26e00000000000436f6f6b69653a206d737473686173683d', 'hex')],
    ['lower-case method', Buffer.from('get / HTTP/1.1\r\n\r\n')],
    ['TLS record that is not a handshake', Buffer.from('170303001000', 'hex')],
  ];
  for (const [name, bytes] of garbage) {
    const s = await connectRaw(gw.port);
    s.write(bytes);
    const { data } = await closedWithin(s, 3000);
    t.equal(data.length, 0, `${name}: closed without an answer`);
  }
  t.equal(await connectionCount(gw, 'rejected-unrecognised'), garbage.length, 'each one counted');
  t.equal(await connectionCount(gw, 'http'), 0, 'none was handed to HTTP');
  t.equal(await connectionCount(gw, 'tls'), 0, 'none was handed to TLS');
  const lines = gw.logs.filter((l) => l.event === 'connection-rejected');
  t.ok(lines.length >= 1, 'logged');
  t.match(lines[0], { reason: 'unrecognised', client: '127.0.0.1', firstBytes: Buffer.from('SSH-2.0-').toString('hex') });
});

t.test('a silent client is closed by the server at detect.timeoutMs', async (t) => {
  const { gw } = await setupDesk(t, { detect: { timeoutMs: 300 } });
  const s = await connectRaw(gw.port);
  const { elapsedMs, data } = await closedWithin(s, 5000);
  t.ok(elapsedMs >= 250, `not before the deadline (${elapsedMs} ms)`);
  t.equal(data.length, 0, 'nothing was sent to it');
  t.equal(await connectionCount(gw, 'rejected-timeout'), 1, 'counted as rejected-timeout');
  // The server's own 'close' may run a moment after the client saw the FIN.
  await until(async () => (await gauge(gw.ctx.metrics.connectionsActive)) === 0, { timeoutMs: 2000 }).catch(() => {});
  t.equal(await gauge(gw.ctx.metrics.connectionsActive), 0, 'no connection left open');
});

t.test('first bytes that never decide are closed at detect.maxBytes', async (t) => {
  // Both stay "more" for every detector well past 64 bytes: a v1 header is allowed 107 bytes
  // before its CRLF, and a v2 header announcing 500 bytes of addresses needs 516. Without the
  // byte cap only the (far away) deadline would end them.
  const { gw } = await setupDesk(t, { detect: { timeoutMs: FAR, maxBytes: 64 } });
  const v1 = Buffer.from(`PROXY TCP4 ${'1'.repeat(90)}`);
  const v2 = Buffer.concat([
    Buffer.from('0d0a0d0a000d0a515549540a', 'hex'),
    Buffer.from([0x21, 0x11, 0x01, 0xf4]),
    Buffer.alloc(200, 0x41),
  ]);
  for (const [name, bytes] of [['PROXY v1 without CRLF', v1], ['PROXY v2 announcing 500 bytes', v2]] as const) {
    const s = await connectRaw(gw.port);
    // Sent in small pieces, as a client trickling bytes would.
    for (let i = 0; i < bytes.length; i += 16) s.write(bytes.subarray(i, i + 16));
    const { elapsedMs, data } = await closedWithin(s, 3000);
    t.equal(data.length, 0, `${name}: closed after ${elapsedMs} ms, without an answer`);
  }
  t.equal(await connectionCount(gw, 'rejected-too-many-bytes'), 2, 'counted as rejected-too-many-bytes');
  t.equal(await connectionCount(gw, 'rejected-proxy-untrusted'), 0, 'never got as far as the PROXY trust check');
});

t.test('a long PROXY v2 header is still bounded by detect.maxBytes and detect.timeoutMs', async (t) => {
  // maxV2HeaderBytes allows 8 KiB, but detection stops at 1 KiB: a 2,000-byte header trickled in
  // is closed at the byte cap, not accepted, and not left to the (far) deadline.
  const capped = await setupDesk(t, { proxyProtocol: { trusted: ['127.0.0.1'], maxV2HeaderBytes: 8192 }, detect: { timeoutMs: FAR, maxBytes: 1024 } });
  const header = F.proxyV2Tcp4WithTlvs(2000);
  const s = await connectRaw(capped.gw.port);
  for (let i = 0; i < header.length; i += 100) s.write(header.subarray(i, i + 100));
  const { data } = await closedWithin(s, 3000);
  t.equal(data.length, 0, 'closed without an answer');
  t.equal(await connectionCount(capped.gw, 'rejected-too-many-bytes'), 1, 'counted as rejected-too-many-bytes');
  t.equal(await connectionCount(capped.gw, 'proxy'), 0, 'the header was never accepted');
  t.ok(capped.gw.logs.some((l) => l.event === 'config-warning'), 'the configuration that cannot work is pointed out at start');

  // A header announcing 4,000 bytes (within every bound) that stops after 100: the deadline ends it.
  const slow = await setupDesk(t, { proxyProtocol: { trusted: ['127.0.0.1'] }, detect: { timeoutMs: 300 } });
  const s2 = await connectRaw(slow.gw.port);
  s2.write(F.proxyV2Tcp4WithTlvs(4000).subarray(0, 100));
  const closed = await closedWithin(s2, 3000);
  t.ok(closed.elapsedMs >= 250, `closed at the deadline (${closed.elapsedMs} ms)`);
  t.equal(await connectionCount(slow.gw, 'rejected-timeout'), 1, 'counted as rejected-timeout');
});

t.test('slowloris: headers trickled byte by byte are cut at http.headersTimeoutMs', async (t) => {
  const { gw } = await setupDesk(t, { detect: { timeoutMs: FAR }, http: { headersTimeoutMs: 500, requestTimeoutMs: FAR } });
  const cases: Array<[string, string, boolean]> = [
    ['clear-text CONNECT', 'CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\nX-Slow: ', false],
    ['GET inside TLS', 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ', true],
  ];
  for (const [name, start, overTls] of cases) {
    const s: net.Socket = overTls
      ? tls.connect({ port: gw.port, host: '127.0.0.1', servername: 'localhost', ca: gw.caCert })
      : net.connect(gw.port, '127.0.0.1');
    s.on('error', () => {});
    t.teardown(() => s.destroy());
    await once(s, overTls ? 'secureConnect' : 'connect');
    s.write(start);
    // One more header byte every 100 ms: the connection is never idle, the headers never end.
    const trickle = setInterval(() => s.writable && s.write('a'), 100);
    s.once('close', () => clearInterval(trickle));
    const { elapsedMs, data } = await closedWithin(s, 5000);
    t.ok(elapsedMs >= 400, `${name}: not cut before the deadline (${elapsedMs} ms)`);
    t.match(data.toString('latin1'), /^(HTTP\/1\.1 408 |)/, `${name}: a 408 or a plain close (${JSON.stringify(data.toString('latin1').slice(0, 40))})`);
  }
  t.equal(gw.ctx.tunnels.size, 0);
});

// -------------------------------------------------------------------------------------------
// Consoles that do not answer, clients that vanish, churn

const BLACK_HOLE = `
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)
port = s.getsockname()[1]
# Never accept; fill the accept queue so Linux drops every further SYN (the dial then hangs).
fill = []
for _ in range(4):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    fill.append(c)
print(port, flush=True)
sys.stdin.read()
`;

/** A loopback port whose TCP handshake never completes, held by a python3 child process. */
async function blackHole(t: Test): Promise<number> {
  const py = spawn('python3', ['-c', BLACK_HOLE], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => {
    py.stdin.destroy();
    py.kill('SIGKILL');
  });
  const port = new Promise<number>((resolve, reject) => {
    let out = '';
    py.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^(\d+)\n/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    py.once('error', reject);
    py.once('exit', (code) => reject(new Error(`python3 exited with ${code} before printing its port`)));
  });
  return Promise.race([port, deadline(5000, 'python3 black hole')]);
}

t.test('a console that never answers the TCP handshake: 502 after tunnel.dialTimeoutMs', async (t) => {
  const port = await blackHole(t);
  // The fixture really swallows handshakes: a direct connection does not complete either.
  const probe = net.connect(port, '127.0.0.1');
  probe.on('error', () => {});
  const probed = await Promise.race([firstOf(probe, ['connect', 'error']).then(([e]) => e), new Promise((r) => setTimeout(r, 300, 'hung'))]);
  probe.destroy();
  t.equal(probed, 'hung', 'the black hole holds the handshake');

  const gw = await startTestGateway(t, { tunnel: { dialTimeoutMs: 500 } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('hang', [{ protocol: 'vnc', host: '127.0.0.1', port }], ['alice']);
  const { ticket } = await gw.ticket('alice', 'hang');
  const started = Date.now();
  const r = await rawRequest(gw.port, `CONNECT ${ticket}.hang:5900 HTTP/1.1\r\n\r\n`, { timeoutMs: 4000 });
  const took = Date.now() - started;
  t.equal(r.status, 502);
  t.equal(JSON.parse(r.body).error.code, 'ONEPORT_ERR_CONSOLE_UNREACHABLE');
  t.ok(took >= 450 && took < 3000, `answered at the dial deadline (${took} ms)`);
  const dials = await gw.ctx.metrics.dials.get();
  t.equal(dials.values.find((v) => v.labels.result === 'timeout')?.value, 1, 'counted as a dial timeout');
  t.equal(gw.ctx.tunnels.size, 0);
});

t.test('a client that vanishes mid-stream: the gateway closes the console leg and forgets the tunnel', async (t) => {
  const gw = await startTestGateway(t);
  const streamer = await startStreamer(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: streamer.port }], ['alice']);
  const consoleSide = streamer.nextConnection();
  const r = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: gw.caCert });
  t.equal(r.status, 200);
  const backendSocket = await consoleSide;
  const consoleClosed = firstOf(backendSocket, ['close']);
  // Mid-stream: some data has arrived, much more is on its way.
  let received = r.rest.length;
  r.socket.on('data', (d: Buffer) => (received += d.length));
  r.socket.resume();
  await Promise.race([until(() => received >= 256 * 1024, { timeoutMs: 5000 }), deadline(6000, 'streaming')]);
  r.socket.destroy();
  await Promise.race([consoleClosed, deadline(5000, 'the console leg was not closed')]);
  t.pass('the gateway closed the console leg');
  await Promise.race([gw.ctx.tunnels.whenEmpty(), deadline(5000, 'tunnel still registered')]);
  const lines = gw.logs.filter((l) => l.event === 'tunnel');
  t.equal(lines.length, 1, 'one log line for the tunnel');
  t.match(lines[0], { user: 'alice', vm: 'desk', transport: 'connect-tls', client: '127.0.0.1', closeReason: /^client-(closed|error)$/ });
  t.ok(Number(lines[0]?.bytesToClient) >= 256 * 1024, `bytes counted (${String(lines[0]?.bytesToClient)})`);
  t.equal(gw.ctx.tunnels.size, 0, 'the registry forgot it');
  t.equal(await gauge(gw.ctx.metrics.tunnelsActive), 0, 'oneport_tunnels_active back to 0');
  t.equal(streamer.open.size, 0, 'nothing left open at the console');
});

t.test('1,000 connections opened and dropped (half mid-ClientHello or mid-CONNECT) leave nothing behind', async (t) => {
  // Detection and handshake deadlines are far away: the gateway must notice the hang-ups itself.
  const { gw } = await setupDesk(t, { detect: { timeoutMs: FAR }, tls: { handshakeTimeoutMs: FAR }, http: { headersTimeoutMs: FAR, requestTimeoutMs: FAR } });
  const tcpHandles = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
  // Per-connection deadlines left running after the connection is gone hold its memory until they fire.
  const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const activeBefore = await gauge(gw.ctx.metrics.connectionsActive);
  const handlesBefore = tcpHandles();
  const timersBefore = timers();
  const partialHello = Buffer.concat([Buffer.from('1603010200010001fc0303', 'hex'), randomBytes(32)]);
  const partialConnect = Buffer.from('CONNECT desk:5900 HTTP/1.1\r\nHost: desk:5900\r\nProxy-Author');
  const one = async (i: number): Promise<void> => {
    const s = await connectRaw(gw.port);
    if (i % 2 === 1) {
      const bytes = i % 4 === 1 ? partialHello : partialConnect;
      await new Promise<void>((resolve) => s.write(bytes, () => resolve()));
    }
    const closed = firstOf(s, ['close']);
    if (i % 3 === 0) s.resetAndDestroy();
    else s.destroy();
    await closed;
  };
  for (let batch = 0; batch < 10; batch++) {
    await Promise.all(Array.from({ length: 100 }, (_, i) => one(batch * 100 + i)));
  }
  // The gauge has no event to await; it must reach the start value long before any deadline.
  await until(async () => (await gauge(gw.ctx.metrics.connectionsActive)) === activeBefore, { timeoutMs: 5000 }).catch(() => {});
  t.equal(await gauge(gw.ctx.metrics.connectionsActive), activeBefore, 'oneport_connections_active back to its start value');
  t.ok((await connectionCount(gw, 'tls')) >= 200, 'the partial ClientHellos reached TLS');
  t.ok((await connectionCount(gw, 'http')) >= 200, 'the partial CONNECTs reached HTTP');
  await until(() => tcpHandles() <= handlesBefore + 5, { timeoutMs: 5000 }).catch(() => {});
  t.ok(tcpHandles() <= handlesBefore + 5, `TCP handles: ${handlesBefore} before, ${tcpHandles()} after`);
  t.ok(timers() <= timersBefore + 10, `timers: ${timersBefore} before, ${timers()} after`);
  t.equal(await connectionCount(gw, 'rejected-timeout'), 0, 'no hang-up is left to be counted as a timeout later');
  const rejectedLines = gw.logs.filter((l) => l.event === 'connection-rejected').length;
  t.ok(rejectedLines <= 20, `rejections are logged at a bounded rate (${rejectedLines} lines)`);
  // Still serving.
  const health = await rawRequest(gw.port, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n', { ca: gw.caCert });
  t.equal(health.status, 200, 'still healthy');
  health.socket.destroy();
});

// -------------------------------------------------------------------------------------------
// TLS

t.test('TLS: 1.1 refused, ALPN http/1.1, SNI picks the certificate, a stalled ClientHello is cut', async (t) => {
  const ca = createCa({ commonName: 'hostile test CA', days: 1 });
  const a = issueServerCert(ca, ['a.test'], { days: 1 });
  const b = issueServerCert(ca, ['b.test'], { days: 1 });
  const dir = t.testdir({ 'a.pem': a.cert, 'a-key.pem': a.key, 'b.pem': b.cert, 'b-key.pem': b.key });
  const gw = await startTestGateway(t, {
    detect: { timeoutMs: FAR },
    tls: {
      certificates: [
        { cert: join(dir, 'a.pem'), key: join(dir, 'a-key.pem') },
        { cert: join(dir, 'b.pem'), key: join(dir, 'b-key.pem') },
      ],
      handshakeTimeoutMs: 500,
    },
  });
  const hello = async (servername: string, extra: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> => {
    const s = tls.connect({ port: gw.port, host: '127.0.0.1', servername, ca: ca.cert, ...extra });
    s.on('error', () => {});
    t.teardown(() => s.destroy());
    await Promise.race([once(s, 'secureConnect'), deadline(5000, `handshake for ${servername}`)]);
    return s;
  };

  // SNI
  const sb = await hello('b.test', { ALPNProtocols: ['h2', 'http/1.1'] });
  t.equal(sb.getPeerCertificate().subject.CN, 'b.test', 'servername b.test gets the b.test certificate');
  t.equal(sb.alpnProtocol, 'http/1.1', 'ALPN: http/1.1 chosen over h2');
  t.equal((await hello('a.test')).getPeerCertificate().subject.CN, 'a.test', 'servername a.test gets the a.test certificate');
  const other = await hello('c.test', { checkServerIdentity: () => undefined });
  t.equal(other.getPeerCertificate().subject.CN, 'a.test', 'an unknown name gets the first (default) certificate');

  // TLS 1.1: the same client options complete a handshake with a server that allows 1.1, so the
  // failure below is the gateway's refusal, not the client's own.
  const old: tls.ConnectionOptions = { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0', ca: ca.cert, servername: 'a.test' };
  const lenient = tls.createServer({ cert: a.cert, key: a.key, minVersion: 'TLSv1', ciphers: 'DEFAULT:@SECLEVEL=0' }, (s) => s.end());
  lenient.listen(0, '127.0.0.1');
  t.teardown(() => lenient.close());
  await once(lenient, 'listening');
  const control = tls.connect({ ...old, port: (lenient.address() as net.AddressInfo).port, host: '127.0.0.1' });
  control.on('error', () => {});
  await Promise.race([once(control, 'secureConnect'), deadline(5000, 'TLS 1.1 control handshake')]);
  t.equal(control.getProtocol(), 'TLSv1.1', 'the client can speak TLS 1.1');
  control.destroy();
  const failuresBefore = await tlsFailures(gw);
  const downgrade = tls.connect({ ...old, port: gw.port, host: '127.0.0.1' });
  const outcome = await Promise.race([
    firstOf(downgrade, ['secureConnect', 'error']).then(([ev, e]) => (ev === 'error' ? `error: ${(e as Error).message}` : 'connected')),
    deadline(5000, 'TLS 1.1 handshake'),
  ]);
  downgrade.on('error', () => {});
  downgrade.destroy();
  t.match(outcome, /^error: .*(protocol|version)/i, `TLS 1.1 refused (${outcome})`);
  await until(async () => (await tlsFailures(gw)) > failuresBefore, { timeoutMs: 2000 }).catch(() => {});
  t.equal(await tlsFailures(gw), failuresBefore + 1, 'counted in oneport_tls_handshake_failures_total');

  // A ClientHello record header (type 1 = client_hello, 512 bytes announced), then silence. The
  // detector says TLS after 6 bytes; only the handshake deadline can end it (detection's is far).
  const tlsBefore = await connectionCount(gw, 'tls');
  const stall = await connectRaw(gw.port);
  stall.write(Buffer.from('160301020001', 'hex'));
  const { elapsedMs, data } = await closedWithin(stall, 5000);
  t.ok(elapsedMs >= 400, `not before tls.handshakeTimeoutMs (${elapsedMs} ms)`);
  t.equal(data.length, 0, 'nothing sent back');
  t.equal(await connectionCount(gw, 'tls'), tlsBefore + 1, 'it had been handed to TLS');
  t.equal(await tlsFailures(gw), failuresBefore + 2, 'counted as a failed handshake');
});

// -------------------------------------------------------------------------------------------
// Graceful stop, idle tunnels, half-close

t.test('graceful stop: refuses new connections, drains open tunnels, then closes them (WebSocket 1001)', async (t) => {
  const { gw } = await setupDesk(t);
  const r = await rawRequest(gw.port, clearConnect((await gw.ticket('alice', 'desk')).ticket));
  t.equal(r.status, 200);
  const sock = r.socket;
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`);
  await opened(ws);
  const wsEcho = (text: string): Promise<string> =>
    Promise.race([
      new Promise<string>((resolve) => {
        ws.once('message', (d: Buffer) => resolve(d.toString()));
        ws.send(Buffer.from(text));
      }),
      deadline(5000, 'WebSocket echo'),
    ]);
  t.equal(await wsEcho('before'), 'before', 'the WebSocket tunnel works');
  t.equal(gw.ctx.tunnels.size, 2);

  const wsClosed = firstOf(ws, ['close']);
  const sockClosed = closedWithin(sock, 6000);
  const stopStarted = Date.now();
  const closing = gw.close({ drainMs: 1500 });

  const late = net.connect(gw.port, '127.0.0.1');
  const lateOutcome = await Promise.race([
    firstOf(late, ['connect', 'error']).then(([ev, e]) => (ev === 'error' ? (e as NodeJS.ErrnoException).code : 'connected')),
    deadline(5000, 'a new connection during the drain'),
  ]);
  late.on('error', () => {});
  late.destroy();
  t.equal(lateOutcome, 'ECONNREFUSED', 'a new connection is refused');
  t.ok(gw.ctx.lifecycle.shuttingDown, 'the node says it is shutting down');

  t.same(await echoRoundTrip(sock, Buffer.from('during the drain'), 5000), Buffer.from('during the drain'), 'the open CONNECT tunnel still echoes');
  t.equal(await wsEcho('during'), 'during', 'the open WebSocket tunnel still echoes');

  const [, code] = await Promise.race([wsClosed, deadline(6000, 'WebSocket close')]);
  const wsAt = Date.now() - stopStarted;
  t.equal(code, 1001, 'the WebSocket client is told the gateway is going away');
  await sockClosed;
  const sockAt = Date.now() - stopStarted;
  t.ok(wsAt >= 1300 && sockAt >= 1300, `closed at the end of the drain, not before (ws ${wsAt} ms, CONNECT ${sockAt} ms)`);
  t.ok(sockAt < 4000, 'and not long after it');
  await Promise.race([closing, deadline(6000, 'close() resolving')]);
  t.equal(gw.ctx.tunnels.size, 0);
  const reasons = gw.logs.filter((l) => l.event === 'tunnel').map((l) => l.closeReason);
  t.same(reasons, ['shutdown', 'shutdown'], 'both tunnels logged as closed by the shutdown');
});

t.test('idle timeout: a tunnel with no traffic is closed at tunnel.idleTimeoutMs; a busy one is not', async (t) => {
  const { gw } = await setupDesk(t, { tunnel: { idleTimeoutMs: 400 } });
  // Busy: a round trip every 50 ms for a second, well past the idle timeout.
  const busy = await rawRequest(gw.port, clearConnect((await gw.ticket('alice', 'desk')).ticket));
  t.equal(busy.status, 200);
  const until1s = Date.now() + 1000;
  let rounds = 0;
  while (Date.now() < until1s) {
    await echoRoundTrip(busy.socket, Buffer.from(`r${rounds++}`), 2000);
    // Pacing the traffic (this is the workload, not a wait for some state).
    await new Promise((r) => setTimeout(r, 50));
  }
  t.notOk(busy.socket.destroyed, `a tunnel with traffic stays open (${rounds} round trips over 1 s)`);
  t.equal(gw.ctx.tunnels.size, 1);
  const busyQuietSince = Date.now();

  // Idle: nothing either way.
  const idle = await rawRequest(gw.port, clearConnect((await gw.ticket('alice', 'desk')).ticket));
  t.equal(idle.status, 200);
  const watching = Date.now();
  const [busyClosed, idleClosed] = await Promise.all([closedWithin(busy.socket, 5000), closedWithin(idle.socket, 5000)]);
  t.ok(idleClosed.elapsedMs >= 300, `the idle tunnel closed at the deadline (${idleClosed.elapsedMs} ms)`);
  // Counted from its last byte, not from when we started watching (setting up the idle tunnel takes time).
  const busyQuietMs = watching + busyClosed.elapsedMs - busyQuietSince;
  t.ok(busyQuietMs >= 300, `the busy one once it went quiet (${busyQuietMs} ms after its last byte)`);
  await Promise.race([gw.ctx.tunnels.whenEmpty(), deadline(5000, 'tunnels still open')]);
  const lines = gw.logs.filter((l) => l.event === 'tunnel');
  t.equal(lines.length, 2);
  t.same(lines.map((l) => l.closeReason), ['idle', 'idle'], 'closeReason idle');
});

t.test('half-close: the client sends, then FIN; the console reads to the end, replies, closes; the reply arrives', async (t) => {
  const gw = await startTestGateway(t);
  const reply = randomBytes(300 * 1024);
  const seen: number[] = [];
  // Reads everything until the client's FIN, then (on a later turn) sends a large reply and closes.
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    let n = 0;
    s.on('data', (d: Buffer) => (n += d.length));
    s.on('end', () => {
      seen.push(n);
      setImmediate(() => s.end(reply));
    });
  });
  server.listen(0, '127.0.0.1');
  t.teardown(() => server.close());
  await once(server, 'listening');
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, publishedPort: 5900 }], ['alice']);
  const sent = randomBytes(100 * 1024);

  const variants: Array<[string, () => Promise<string>, { ca?: string }]> = [
    ['clear-text CONNECT', async () => clearConnect((await gw.ticket('alice', 'desk')).ticket), {}],
    ['CONNECT inside TLS', async () => `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: gw.caCert }],
  ];
  for (const [name, request, opts] of variants) {
    const r = await rawRequest(gw.port, await request(), opts);
    t.equal(r.status, 200, name);
    const chunks: Buffer[] = [r.rest];
    r.socket.on('data', (d: Buffer) => chunks.push(d));
    const ended = firstOf(r.socket, ['end', 'error']);
    r.socket.resume();
    r.socket.end(sent);
    const [how, err] = await Promise.race([ended, deadline(5000, `${name}: reply`)]);
    t.equal(how, 'end', `${name}: the reply ended with a FIN ${err ? String(err) : ''}`);
    const got = Buffer.concat(chunks);
    t.equal(seen.at(-1), sent.length, `${name}: the console read all ${sent.length} bytes, then saw the FIN`);
    t.equal(got.length, reply.length, `${name}: the whole reply arrived after the client's FIN`);
    t.ok(got.equals(reply), `${name}: byte for byte`);
    r.socket.destroy();
  }
  await Promise.race([gw.ctx.tunnels.whenEmpty(), deadline(5000, 'tunnels still open')]);
  t.equal(gw.ctx.tunnels.size, 0);
});
