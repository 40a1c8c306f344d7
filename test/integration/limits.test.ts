/**
 * Limits against a real gateway on loopback: header size and count (431), PROXY protocol trust,
 * connections per address and the fair share near the global cap (refused at accept), login and
 * ticket brute-force budgets (429 + Retry-After).
 *
 * Other client addresses come from 127.0.0.0/8 (`localAddress`), so per-address limits can be
 * seen to apply to one address and not to its neighbours.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import type { TestGateway } from '../helpers/gateway.js';
import { clearConnect, connectionCount, forge, setupDesk } from '../helpers/scenario.js';
import { basic, closedWithin, connectRaw, echoRoundTrip, errorCode, rawRequest } from '../helpers/net.js';
import { until } from '../helpers/wait.js';
import * as F from '../fixtures/packets.js';

/** Deadlines far beyond any test's own: only the protection under test can close a connection in time. */
const FAR = 60_000;

// -------------------------------------------------------------------------------------------
// Headers

t.test('431 for too many or too large headers, over clear-text CONNECT and inside TLS', async (t) => {
  const { gw, echo } = await setupDesk(t, { http: { maxHeaders: 64, maxHeaderBytes: 8192 } });
  const { ticket } = await gw.ticket('alice', 'desk');
  const thousands = Array.from({ length: 2000 }, (_, i) => `X-H${i}: v\r\n`).join('');
  const hundred = Array.from({ length: 100 }, (_, i) => `a${i}:b\r\n`).join('');
  const huge = `X-Big: ${'x'.repeat(10 * 1024)}\r\n`;
  const heads: Array<[string, string]> = [
    ['2,000 headers', thousands],
    ['100 tiny headers (limit 64)', hundred],
    ['one 10 KiB header', huge],
  ];
  for (const [name, headers] of heads) {
    // The ticket is valid: only the header limits stand between this request and a tunnel.
    const clear = await rawRequest(gw.port, `CONNECT ${ticket}.desk:5900 HTTP/1.1\r\nHost: desk:5900\r\n${headers}\r\n`);
    t.equal(clear.status, 431, `clear-text CONNECT, ${name}: 431`);
    t.equal(errorCode(clear.body), 'ONEPORT_ERR_HEADERS_TOO_LARGE', `clear-text CONNECT, ${name}: JSON error`);
    const inTls = await rawRequest(gw.port, `GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n${headers}\r\n`, { ca: gw.caCert });
    t.equal(inTls.status, 431, `TLS GET /healthz, ${name}: 431`);
    t.equal(errorCode(inTls.body), 'ONEPORT_ERR_HEADERS_TOO_LARGE', `TLS GET /healthz, ${name}: JSON error`);
    const tlsConnect = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n${headers}\r\n`, { ca: gw.caCert });
    t.equal(tlsConnect.status, 431, `TLS CONNECT, ${name}: 431`);
  }
  t.equal(echo.accepted, 0, 'no tunnel was opened for any of them');

  // Just under the limits is served: the limits are the configured ones, not something tighter.
  const sixty = Array.from({ length: 60 }, (_, i) => `a${i}:b\r\n`).join('');
  const ok = await rawRequest(gw.port, `GET /healthz HTTP/1.1\r\nHost: localhost\r\n${sixty}X-Big: ${'x'.repeat(6 * 1024)}\r\n\r\n`, { ca: gw.caCert });
  t.equal(ok.status, 200, '61 headers and a 6 KiB one are fine');
  ok.socket.destroy();
  const tunnel = await rawRequest(gw.port, `CONNECT ${ticket}.desk:5900 HTTP/1.1\r\n${sixty}\r\n`);
  t.equal(tunnel.status, 200, 'the ticket was not spent by the refused requests');
  tunnel.socket.destroy();
});

// -------------------------------------------------------------------------------------------
// PROXY protocol

/** A PROXY v2 header (PROXY command, TCP over IPv4) naming `src`:`sport`. */
function proxyV2(src: string, sport: number): Buffer {
  const h = Buffer.alloc(28);
  Buffer.from('0d0a0d0a000d0a515549540a', 'hex').copy(h, 0);
  h[12] = 0x21;
  h[13] = 0x11;
  h.writeUInt16BE(12, 14);
  Buffer.from(src.split('.').map(Number)).copy(h, 16);
  Buffer.from([198, 51, 100, 1]).copy(h, 20);
  h.writeUInt16BE(sport, 24);
  h.writeUInt16BE(443, 26);
  return h;
}

t.test('PROXY protocol from a trusted balancer: v1 and v2 name the real client', async (t) => {
  const { gw } = await setupDesk(t, { proxyProtocol: { trusted: ['127.0.0.1'] } });
  const v1 = await rawRequest(gw.port, `PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n${clearConnect((await gw.ticket('alice', 'desk')).ticket)}`);
  t.equal(v1.status, 200, 'PROXY v1 + CONNECT with a ticket: 200');
  t.same(await echoRoundTrip(v1.socket, Buffer.from('v1')), Buffer.from('v1'));
  const v2 = await rawRequest(gw.port, Buffer.concat([proxyV2('192.0.2.11', 40001), Buffer.from(clearConnect((await gw.ticket('alice', 'desk')).ticket))]));
  t.equal(v2.status, 200, 'PROXY v2 + CONNECT with a ticket: 200');
  t.same(await echoRoundTrip(v2.socket, Buffer.from('v2')), Buffer.from('v2'));
  t.same(gw.ctx.tunnels.list().map((x) => x.client).sort(), ['192.0.2.10', '192.0.2.11'], 'tunnels belong to the named clients');
  v1.socket.destroy();
  v2.socket.destroy();
  await gw.ctx.tunnels.whenEmpty();
  const lines = gw.logs.filter((l) => l.event === 'tunnel');
  t.same(lines.map((l) => l.client).sort(), ['192.0.2.10', '192.0.2.11'], "the tunnel log lines name the client from the header, not the balancer's address");
  t.equal(await connectionCount(gw, 'proxy'), 2);
});

t.test('PROXY v2 with the large TLVs cloud balancers send: accepted up to proxyProtocol.maxV2HeaderBytes', async (t) => {
  const { gw, echo } = await setupDesk(t, { proxyProtocol: { trusted: ['127.0.0.1'] }, detect: { timeoutMs: FAR } });
  // Default bound (4 KiB): a 1,000-byte header (AWS, Azure, GCP and SSL TLVs), then one exactly
  // at 4096 = detect.maxBytes, each followed in the same write by a CONNECT that must parse.
  for (const [name, header] of [['cloud TLVs, 1,000 bytes', F.PROXY_V2_CLOUD_TLVS], ['4,096 bytes, at both limits', F.proxyV2Tcp4WithTlvs(4096)]] as const) {
    const r = await rawRequest(gw.port, Buffer.concat([header, Buffer.from(clearConnect((await gw.ticket('alice', 'desk')).ticket))]), { timeoutMs: 2000 });
    t.equal(r.status, 200, `${name}: 200`);
    t.same(await echoRoundTrip(r.socket, Buffer.from('tlv')), Buffer.from('tlv'), `${name}: not a byte past the header was taken`);
    r.socket.destroy();
  }
  await gw.ctx.tunnels.whenEmpty();
  t.same(gw.logs.filter((l) => l.event === 'tunnel').map((l) => l.client), ['192.0.2.10', '192.0.2.10'], 'tunnels belong to the client the header names');

  const small = await setupDesk(t, { proxyProtocol: { trusted: ['127.0.0.1'], maxV2HeaderBytes: 1024 }, detect: { timeoutMs: FAR } });
  const at = await rawRequest(small.gw.port, Buffer.concat([F.proxyV2Tcp4WithTlvs(1024), Buffer.from(clearConnect((await small.gw.ticket('alice', 'desk')).ticket))]), { timeoutMs: 2000 });
  t.equal(at.status, 200, 'maxV2HeaderBytes 1024: a 1,024-byte header is accepted');
  at.socket.destroy();
  const s = await connectRaw(small.gw.port);
  s.write(Buffer.concat([F.proxyV2Tcp4WithTlvs(1025), Buffer.from(clearConnect((await small.gw.ticket('alice', 'desk')).ticket))]));
  const { data } = await closedWithin(s, 2000);
  t.equal(data.length, 0, 'one byte over: closed at once, without an answer');
  t.equal(await connectionCount(small.gw, 'rejected-unrecognised'), 1, 'counted as rejected-unrecognised');
  t.equal(small.echo.accepted, 1, 'no tunnel for it');
  t.equal(echo.accepted, 2);
});

t.test('PROXY protocol from anyone else closes the connection', async (t) => {
  const none = await setupDesk(t, { proxyProtocol: { trusted: [] } });
  const only1 = await setupDesk(t, { proxyProtocol: { trusted: ['127.0.0.1'] } });
  const cases: Array<[string, { gw: TestGateway; echo: { accepted: number } }, string | undefined]> = [
    ['trusted [] (from 127.0.0.1)', none, undefined],
    ['only 127.0.0.1 trusted, from 127.0.0.2', only1, '127.0.0.2'],
  ];
  for (const [name, { gw, echo }, localAddress] of cases) {
    // A valid ticket follows the header: accepting the header would open a tunnel.
    const { ticket } = await gw.ticket('alice', 'desk');
    const s = await connectRaw(gw.port, localAddress ? { localAddress } : {});
    s.write(`PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n${clearConnect(ticket)}`);
    const { data } = await closedWithin(s, 3000);
    t.equal(data.length, 0, `${name}: closed without an answer`);
    t.equal(await connectionCount(gw, 'rejected-proxy-untrusted'), 1, `${name}: counted as rejected-proxy-untrusted`);
    t.equal(echo.accepted, 0, `${name}: no tunnel`);
    const v2 = await connectRaw(gw.port, localAddress ? { localAddress } : {});
    v2.write(Buffer.concat([proxyV2('192.0.2.10', 40000), Buffer.from(clearConnect(ticket))]));
    await closedWithin(v2, 3000);
    t.equal(await connectionCount(gw, 'rejected-proxy-untrusted'), 2, `${name}: a v2 header too`);
    t.equal(gw.ctx.tunnels.size, 0);
    const line = gw.logs.find((l) => l.event === 'connection-rejected' && l.reason === 'proxy-untrusted');
    t.match(line, { client: localAddress ?? '127.0.0.1' }, `${name}: logged with the real peer address`);
  }
});

// -------------------------------------------------------------------------------------------
// Per-address connection limit, login and ticket budgets

const farDeadlines = { detect: { timeoutMs: FAR }, tls: { handshakeTimeoutMs: FAR }, http: { headersTimeoutMs: FAR, requestTimeoutMs: FAR } } as const;

async function activeConnections(gw: TestGateway): Promise<number> {
  return (await gw.ctx.metrics.connectionsActive.get()).values.reduce((sum, v) => sum + v.value, 0);
}

/** Opens a connection and expects the gateway to close it at once, without a byte. */
async function refusedAtOnce(t: Test, gw: TestGateway, what: string, opts: { localAddress?: string; write?: string } = {}): Promise<void> {
  const s = await connectRaw(gw.port, opts.localAddress ? { localAddress: opts.localAddress } : {});
  if (opts.write !== undefined) s.write(opts.write);
  const { data } = await closedWithin(s, 2000);
  t.equal(data.length, 0, `${what}: closed at once, nothing sent`);
}

t.test('limits.maxConnectionsPerAddress: connections over it are closed at accept, before detection, TLS or headers', async (t) => {
  const perAddress = 10;
  // Without the refusal at accept, one address holding perAddress + 30 idle connections fills
  // the whole port until the (far) deadlines, and 127.0.0.2 is dropped.
  const { gw } = await setupDesk(t, { ...farDeadlines, limits: { maxConnectionsPerAddress: perAddress, maxConnections: perAddress + 30 } });
  const open: net.Socket[] = [];
  t.teardown(() => open.forEach((s) => s.destroy()));
  for (let i = 0; i < perAddress; i++) open.push(await connectRaw(gw.port));
  await until(async () => (await activeConnections(gw)) === perAddress);
  for (let i = 0; i < 30; i++) await refusedAtOnce(t, gw, `extra connection ${i + 1} from 127.0.0.1`);
  await t.rejects(rawRequest(gw.port, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n', { ca: gw.caCert, timeoutMs: 2000 }), 'a TLS client gets no handshake (a reset, not a 429)');
  t.equal(await connectionCount(gw, 'rejected-address-limit'), 31, 'counted as rejected-address-limit');
  const lines = gw.logs.filter((l) => l.event === 'connection-rejected' && l.reason === 'address-limit');
  t.ok(lines.length >= 1 && lines.length <= 10, `logged at a bounded rate (${lines.length} lines for 31 refusals)`);
  t.match(lines[0], { client: '127.0.0.1' });

  // Another address is served, with a working tunnel.
  const other = await rawRequest(gw.port, clearConnect((await gw.ticket('alice', 'desk')).ticket), { localAddress: '127.0.0.2', timeoutMs: 2000 });
  t.equal(other.status, 200, '127.0.0.2 is not limited by 127.0.0.1');
  t.same(await echoRoundTrip(other.socket, Buffer.from('ok')), Buffer.from('ok'));
  open.push(other.socket as net.Socket);

  // The limit counts open connections: one closes, a new one is allowed.
  open.shift()?.destroy();
  await until(async () => (await activeConnections(gw)) === perAddress);
  const again = await rawRequest(gw.port, clearConnect((await gw.ticket('alice', 'desk')).ticket), { timeoutMs: 2000 });
  t.equal(again.status, 200, 'after one of them closed, 127.0.0.1 may connect again');
  open.push(again.socket as net.Socket);
});

t.test('limits.maxConnections: near the cap, an address holding more than its fair share cannot take the last slots', async (t) => {
  const max = 40;
  // The per-address limit is above the global cap: only the fair-share rule keeps room.
  const { gw } = await setupDesk(t, { ...farDeadlines, limits: { maxConnections: max, maxConnectionsPerAddress: 1000 } });
  const open: net.Socket[] = [];
  t.teardown(() => open.forEach((s) => s.destroy()));
  // Up to 80% of the cap (32) nobody is asked for a fair share.
  for (let i = 0; i < 32; i++) open.push(await connectRaw(gw.port));
  await until(async () => (await activeConnections(gw)) === 32);
  // Above it, 127.0.0.1 holds 32 of 40, more than the share of one of two addresses (20).
  for (let i = 0; i < 8; i++) await refusedAtOnce(t, gw, `connection ${33 + i} from 127.0.0.1`);
  t.equal(await connectionCount(gw, 'rejected-fair-share'), 8, 'counted as rejected-fair-share');
  for (const address of ['127.0.0.2', '127.0.0.3']) {
    const r = await rawRequest(gw.port, clearConnect((await gw.ticket('alice', 'desk')).ticket), { localAddress: address, timeoutMs: 2000 });
    t.equal(r.status, 200, `${address} still gets a tunnel`);
    t.same(await echoRoundTrip(r.socket, Buffer.from(address)), Buffer.from(address));
    open.push(r.socket as net.Socket);
  }
});

t.test('after a PROXY header, the per-address limit applies to the client it names (IPv6 by its /64), not to the balancer', async (t) => {
  const perAddress = 5;
  const { gw } = await setupDesk(t, { ...farDeadlines, proxyProtocol: { trusted: ['127.0.0.1'] }, limits: { maxConnectionsPerAddress: perAddress } });
  const open: net.Socket[] = [];
  t.teardown(() => open.forEach((s) => s.destroy()));
  const header = (client: string): string => `PROXY ${client.includes(':') ? 'TCP6' : 'TCP4'} ${client} ${client.includes(':') ? '2001:db8::443' : '198.51.100.1'} 40000 443\r\n`;
  // Five clients of one /64, each a different address: the limit counts them together.
  for (let i = 1; i <= perAddress; i++) {
    const s = await connectRaw(gw.port);
    s.write(header(`2001:db8:1:2::${i}`));
    open.push(s);
  }
  await until(async () => (await connectionCount(gw, 'proxy')) === perAddress);
  // The balancer sends the same /64 many more times: each closed as soon as its header is read.
  for (let i = 0; i < 30; i++) await refusedAtOnce(t, gw, `client 2001:db8:1:2::${100 + i} through the balancer`, { write: header(`2001:db8:1:2::${100 + i}`) });
  t.equal(await connectionCount(gw, 'rejected-address-limit'), 30, 'counted as rejected-address-limit');
  t.match(gw.logs.find((l) => l.event === 'connection-rejected' && l.reason === 'address-limit'), { client: '2001:db8:1:2::100' }, 'logged with the client the header named');

  // The balancer itself (35 connections from 127.0.0.1) is not limited, nor are other clients.
  for (const client of ['2001:db8:1:3::1', '192.0.2.60', '::ffff:192.0.2.61']) {
    const r = await rawRequest(gw.port, `${header(client)}${clearConnect((await gw.ticket('alice', 'desk')).ticket)}`, { timeoutMs: 2000 });
    t.equal(r.status, 200, `${client} through the balancer: 200`);
    open.push(r.socket as net.Socket);
  }

  // The count moved to the named client and leaves with its connection.
  for (const s of open.splice(0, perAddress)) s.destroy();
  await until(async () => (await activeConnections(gw)) === 3);
  const back = await rawRequest(gw.port, `${header('2001:db8:1:2::ffff')}${clearConnect((await gw.ticket('alice', 'desk')).ticket)}`, { timeoutMs: 2000 });
  t.equal(back.status, 200, 'once its connections closed, the /64 is served again');
  open.push(back.socket as net.Socket);
});

const login = (user: string, password: string): string => {
  const body = JSON.stringify({ user, password });
  return `POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
};

t.test('limits.loginsPerAddressPerMinute: wrong passwords three times, then 429 even for the right one', async (t) => {
  const { gw } = await setupDesk(t, { limits: { loginsPerAddressPerMinute: 3, loginsPerUserPerMinute: 100 } });
  for (let i = 1; i <= 3; i++) {
    const r = await rawRequest(gw.port, login('alice', `wrong-password-${i}`), { ca: gw.caCert });
    t.equal(r.status, 401, `wrong password ${i}: 401`);
    t.equal(errorCode(r.body), 'ONEPORT_ERR_BAD_CREDENTIALS');
  }
  const fourth = await rawRequest(gw.port, login('alice', 'wrong-password-4'), { ca: gw.caCert });
  t.equal(fourth.status, 429, 'the fourth: 429');
  t.match(fourth.head, /\r\nRetry-After: [1-9]\d*/i, 'with Retry-After');
  t.equal(errorCode(fourth.body), 'ONEPORT_ERR_RATE_LIMITED');
  const right = await rawRequest(gw.port, login('alice', 'alice-password-1'), { ca: gw.caCert });
  t.equal(right.status, 429, 'the right password from the same address is refused too (no hashing for it)');
  right.socket.destroy();
  const elsewhere = await rawRequest(gw.port, login('alice', 'alice-password-1'), { ca: gw.caCert, localAddress: '127.0.0.3' });
  t.equal(elsewhere.status, 200, 'the user is not locked out from another address');
  elsewhere.socket.destroy();
  t.notOk(gw.logText().includes('wrong-password-'), 'attempted passwords are not logged');
});

t.test('limits.authFailuresPerAddressPerMinute: bad tickets three times, then 429 even for a good one', async (t) => {
  const { gw } = await setupDesk(t, { limits: { authFailuresPerAddressPerMinute: 3 } });
  const attacker = { localAddress: '127.0.0.4' };
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) {
    const forged = forge((await gw.ticket('alice', 'desk')).ticket);
    const r = await rawRequest(gw.port, clearConnect(forged), attacker);
    statuses.push(r.status);
    if (i === 3) {
      t.match(r.head, /\r\nRetry-After: [1-9]\d*/i, 'with Retry-After');
      t.equal(errorCode(r.body), 'ONEPORT_ERR_RATE_LIMITED');
    }
  }
  t.same(statuses, [407, 407, 407, 429], 'three forged tickets get 407, the fourth 429');
  const { ticket } = await gw.ticket('alice', 'desk');
  const good = await rawRequest(gw.port, clearConnect(ticket), attacker);
  t.equal(good.status, 429, 'a valid ticket from that address is refused before it is looked at');
  const victim = await rawRequest(gw.port, clearConnect(ticket));
  t.equal(victim.status, 200, 'so it was not spent: its owner on 127.0.0.1 still gets in');
  victim.socket.destroy();
  const tlsForged = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${forge(ticket)}\r\n\r\n`, { ca: gw.caCert, ...attacker });
  t.equal(tlsForged.status, 429, 'inside TLS as well');
});
