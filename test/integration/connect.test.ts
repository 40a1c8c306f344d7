/**
 * HTTP CONNECT (CONTRACT section 3) against a real gateway on loopback: every credential form,
 * what real clients send, the status table, and that refused requests never dial anything.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { startTestGateway } from '../helpers/gateway.js';
import { basic, closedPort, echoRoundTrip, rawRequest, readResponse, startBackend } from '../helpers/net.js';
import { mintTicket } from '../../gateway/auth/tickets.js';
import { until } from '../helpers/wait.js';

async function setup(t: Test, config = {}) {
  const gw = await startTestGateway(t, config);
  const echo = await startBackend(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], ['alice']);
  await gw.addVm('other', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], ['alice', 'bob']);
  return { gw, echo };
}

const dials = async (gw: Awaited<ReturnType<typeof startTestGateway>>): Promise<number> => {
  const m = await gw.ctx.metrics.dials.get();
  return m.values.find((v) => v.labels.result === 'attempt')?.value ?? 0;
};

t.test('inside TLS: Basic user:password, then bytes both ways', async (t) => {
  const { gw, echo } = await setup(t);
  const r = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nHost: desk:5900\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: gw.caCert });
  t.equal(r.head.split('\r\n')[0], 'HTTP/1.1 200 Connection established');
  const payload = Buffer.alloc(256 * 1024, 7);
  t.same(await echoRoundTrip(r.socket, payload), payload, '256 KiB echoed through the tunnel');
  t.equal(echo.accepted, 1);
  r.socket.destroy();
});

t.test('inside TLS: a client that comes back resumes its TLS session (TLS 1.3 and 1.2)', async (t) => {
  const { gw } = await setup(t);
  for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
    let session: Buffer | undefined;
    for (const round of ['first', 'second']) {
      const s = tls.connect({ port: gw.port, host: '127.0.0.1', ca: gw.caCert, servername: 'localhost', maxVersion, ...(session ? { session } : {}) });
      s.on('error', () => {});
      // TLS 1.3 tickets come after the handshake: the session is kept from the last one seen.
      s.on('session', (b: Buffer) => (session = b));
      await once(s, 'secureConnect');
      if (!session) t.equal(s.getPeerCertificate().pubkey?.length, 65, `${maxVersion}: the certificate the gateway made is ECDSA P-256`);
      s.write(`CONNECT desk:5900 HTTP/1.1\r\nHost: desk:5900\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`);
      const r = await readResponse(s);
      t.equal(r.status, 200);
      t.equal(s.isSessionReused(), round === 'second', `${maxVersion} ${round} handshake: reused ${round === 'second'}`);
      t.ok(session, `${maxVersion}: the gateway gave a session ticket`);
      s.destroy();
    }
  }
});

t.test('clear text: a ticket in Basic, in Bearer, in the host name; HTTP/1.0 without Host; any header case', async (t) => {
  const { gw } = await setup(t);
  const forms: Array<[string, (tk: string) => string]> = [
    ['curl style', (tk) => `CONNECT desk:5900 HTTP/1.1\r\nHost: desk:5900\r\nProxy-Authorization: ${basic('alice', tk)}\r\n\r\n`],
    ['socat style (HTTP/1.0, no Host, Proxy-authorization)', (tk) => `CONNECT desk:5900 HTTP/1.0\r\nProxy-authorization: ${basic('alice', tk)}\r\n\r\n`],
    ['GLib style (HTTP/1.0, Proxy-Connection)', (tk) => `CONNECT desk:5900 HTTP/1.0\r\nHost: desk:5900\r\nProxy-Connection: keep-alive\r\nPROXY-AUTHORIZATION: Bearer ${tk}\r\n\r\n`],
    ['FreeRDP style (ticket in the host name, no credentials)', (tk) => `CONNECT ${tk}.desk:5900 HTTP/1.1\r\nHost: ${tk}.desk:5900\r\n\r\n`],
    ['HTTP/1.1 with no Host at all', (tk) => `CONNECT ${tk}.desk:5900 HTTP/1.1\r\n\r\n`],
    ['Desktop-Protocol header', (tk) => `CONNECT desk:5900 HTTP/1.1\r\nDesktop-Protocol: VNC\r\nProxy-Authorization: Bearer ${tk}\r\n\r\n`],
  ];
  for (const [name, req] of forms) {
    const { ticket } = await gw.ticket('alice', 'desk');
    const r = await rawRequest(gw.port, req(ticket));
    t.equal(r.status, 200, name);
    t.same(await echoRoundTrip(r.socket, Buffer.from('ping')), Buffer.from('ping'), `${name}: data flows`);
    r.socket.destroy();
  }
  t.notOk(gw.logText().includes('alice-password-1'), 'no password in the logs');
});

t.test('bytes sent right behind the CONNECT headers reach the console', async (t) => {
  const { gw } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const early = Buffer.from('EARLY-BYTES-IN-THE-SAME-SEGMENT');
  const r = await rawRequest(gw.port, Buffer.concat([Buffer.from(`CONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`), early]));
  t.equal(r.status, 200);
  // The echo backend sends them back: they were forwarded, not eaten by the HTTP parser.
  const back = r.rest.length >= early.length ? r.rest : await echoRoundTrip(r.socket, Buffer.alloc(0)).catch(() => r.rest);
  let got = Buffer.from(back);
  if (got.length < early.length) {
    got = Buffer.concat([got, await new Promise<Buffer>((res) => r.socket.once('data', res).resume())]);
  }
  t.same(got.subarray(0, early.length), early);
  r.socket.destroy();
});

t.test('a SPICE client may open several channels on one ticket, from its own address only', async (t) => {
  const { gw } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const req = `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`;
  const a = await rawRequest(gw.port, req);
  const b = await rawRequest(gw.port, req);
  t.equal(a.status, 200, 'first channel');
  t.equal(b.status, 200, 'second channel, same address');
  const replay = await rawRequest(gw.port, req, { localAddress: '127.0.0.2' });
  t.equal(replay.status, 407, 'the same ticket from another address is a replay');
  t.match(replay.head, /Proxy-Authenticate: Basic realm="oneport"/);
  a.socket.destroy();
  b.socket.destroy();
  const sessions = new Set(gw.ctx.tunnels.list().map((x) => x.sessionId));
  t.ok(sessions.size <= 1, 'channels share one console session');
});

t.test('once the session it opened has ended, a ticket is spent: reuse only while a connection is open or just after', async (t) => {
  // auth.ticketReuseAfterCloseMs 0: no grace after the last close, so the rule shows without waiting.
  const { gw } = await setup(t, { auth: { ticketReuseAfterCloseMs: 0 } });
  const { ticket } = await gw.ticket('alice', 'desk');
  const req = `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`;
  const a = await rawRequest(gw.port, req);
  t.equal(a.status, 200, 'first use');
  const b = await rawRequest(gw.port, req);
  t.equal(b.status, 200, 'a second connection while the first is open joins the session');
  const closed = (n: number) => until(() => gw.logs.filter((l) => l.event === 'tunnel').length === n, { timeoutMs: 5000 });
  a.socket.destroy();
  await closed(1);
  const c = await rawRequest(gw.port, req);
  t.equal(c.status, 200, 'one of the two still open: still that session');
  b.socket.destroy();
  c.socket.destroy();
  await closed(3);
  const late = await rawRequest(gw.port, req);
  t.equal(late.status, 407, 'every connection closed (curl run twice): spent, although within auth.ticketReuseMs');
  late.socket.destroy();

  // A refused attempt releases its count too: a console that is down leaves nothing open.
  const again = await startTestGateway(t, {});
  await again.addUser('alice', 'alice-password-1');
  await again.addVm('down', [{ protocol: 'vnc', host: '127.0.0.1', port: await closedPort() }], ['alice']);
  const tk = (await again.ticket('alice', 'down')).ticket;
  const downReq = `CONNECT down:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', tk)}\r\n\r\n`;
  t.equal((await rawRequest(again.port, downReq)).status, 502, 'console refuses');
  t.equal((await rawRequest(again.port, downReq)).status, 502, 'a prompt retry (within auth.ticketReuseAfterCloseMs) is still that session and reaches the console again');
});

t.test('bad credentials and targets get the contract status, and nothing is dialled', async (t) => {
  const { gw, echo } = await setup(t);
  const sentinel = await startBackend(t);
  const before = await dials(gw);
  const { ticket } = await gw.ticket('alice', 'desk');
  const keys = gw.ctx.dir.keys();
  const expired = mintTicket(keys, 'desk', 'vnc', 60_000, Date.now() - 120_000).ticket;
  const { ticket: otherVm } = await gw.ticket('alice', 'other');
  const tlsCases: Array<[string, string, number]> = [
    ['missing credentials', 'CONNECT desk:5900 HTTP/1.1\r\n\r\n', 407],
    ['wrong password', `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'nope-nope-nope')}\r\n\r\n`, 407],
    ['forged ticket', `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${'a'.repeat(ticket.length)}\r\n\r\n`, 407],
    ['expired ticket', `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${expired}\r\n\r\n`, 407],
    ['ticket for another VM', `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${otherVm}\r\n\r\n`, 407],
    ['unknown scheme', 'CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Digest x\r\n\r\n', 407],
    ['IPv4 literal', `CONNECT 127.0.0.1:${sentinel.port} HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 403],
    ['IPv6 literal', `CONNECT [::1]:${sentinel.port} HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 403],
    ['decimal address', `CONNECT 2130706433:${sentinel.port} HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 403],
    ['localhost:22', `CONNECT localhost:22 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 404],
    ['localhost on the sentinel port', `CONNECT localhost:${sentinel.port} HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 404],
    ['unknown VM', `CONNECT nosuchvm:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 404],
    ['port the VM does not publish', `CONNECT desk:22 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 404],
    ['console port instead of the published one', `CONNECT desk:${echo.port} HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 404],
    ['protocol the VM does not offer', `CONNECT desk:5900 HTTP/1.1\r\nDesktop-Protocol: rdp\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 404],
    ['not assigned', `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('bob', 'bob-password-1')}\r\n\r\n`, 403],
    ['malformed target', `CONNECT desk HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 400],
    ['bad Desktop-Protocol', `CONNECT desk:5900 HTTP/1.1\r\nDesktop-Protocol: ssh\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, 400],
  ];
  for (const [name, req, status] of tlsCases) {
    const r = await rawRequest(gw.port, req, { ca: gw.caCert });
    t.equal(r.status, status, name);
    if (status === 407) t.match(r.head, /Proxy-Authenticate: Basic realm="oneport"/, `${name}: challenge`);
    t.match(JSON.parse(r.body), { error: { code: /^ONEPORT_ERR_/ } }, `${name}: JSON error body`);
  }
  const clear = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`);
  t.equal(clear.status, 403, 'password in clear text');
  t.equal(JSON.parse(clear.body).error.code, 'ONEPORT_ERR_CLEARTEXT_PASSWORD');
  t.equal(sentinel.accepted, 0, 'the sentinel console behind every address form was never contacted');
  t.equal(echo.accepted, 0, 'nor was the real console');
  t.equal(await dials(gw), before, 'no outbound dial was attempted');
  t.notOk(gw.logText().includes(ticket), 'tickets never reach the logs');
  t.notOk(gw.logText().includes('alice-password-1'), 'passwords never reach the logs');
});

t.test('console refuses: 502; console never answers: 502 after the dial deadline', async (t) => {
  const gw = await startTestGateway(t, { tunnel: { dialTimeoutMs: 500 } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('refuses', [{ protocol: 'vnc', host: '127.0.0.1', port: await closedPort() }], ['alice']);
  const { ticket } = await gw.ticket('alice', 'refuses');
  const r = await rawRequest(gw.port, `CONNECT ${ticket}.refuses:5900 HTTP/1.1\r\n\r\n`);
  t.equal(r.status, 502);
  t.equal(JSON.parse(r.body).error.code, 'ONEPORT_ERR_CONSOLE_UNREACHABLE');
});

t.test('behind a trusted balancer, the per-address limit counts the clients the PROXY header names', async (t) => {
  const { gw } = await setup(t, { proxyProtocol: { trusted: ['127.0.0.1'] }, limits: { maxConnectionsPerAddress: 1 } });
  const open: Array<{ socket: { destroy(): void } }> = [];
  t.teardown(() => open.forEach((o) => o.socket.destroy()));
  // The balancer holds another connection that has not sent its header yet.
  const pending = net.connect(gw.port, '127.0.0.1');
  pending.on('error', () => {});
  open.push({ socket: pending });
  await once(pending, 'connect');
  for (const client of ['192.0.2.10', '192.0.2.11']) {
    const { ticket } = await gw.ticket('alice', 'desk');
    const r = await rawRequest(gw.port, `PROXY TCP4 ${client} 198.51.100.1 40000 443\r\nCONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
    t.equal(r.status, 200, `client ${client} through the balancer`);
    open.push(r);
  }
  const { ticket } = await gw.ticket('alice', 'desk');
  // Refused as soon as the header names the client, before its request is read (listener.ts).
  const third = net.connect(gw.port, '127.0.0.1');
  third.on('error', () => {});
  await once(third, 'connect');
  third.write(`PROXY TCP4 192.0.2.10 198.51.100.1 40001 443\r\nCONNECT ${ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  const answer: Buffer[] = [];
  third.on('data', (d: Buffer) => answer.push(d));
  await once(third, 'close');
  t.equal(Buffer.concat(answer).length, 0, 'a second connection from the same real client is over its limit: closed, no answer');
  t.same(
    gw.ctx.tunnels.list().map((x) => x.client).sort(),
    ['192.0.2.10', '192.0.2.11'],
    'tunnels are attributed to the real clients',
  );
});
