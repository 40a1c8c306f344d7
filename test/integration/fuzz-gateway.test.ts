/**
 * The hostile-input corpus against a real gateway (security issue 10): with a tunnel open, send
 * the hand-written cases of test/fixtures/hostile-corpus.ts and a corpus generated with fast-check
 * from the committed seed (test/helpers/fuzz.ts) over raw sockets on loopback: request lines,
 * %-escapes, odd Unicode, absolute-form targets, CONNECT authorities, header names and values,
 * tickets in the query, the host and the credentials, in clear text and inside TLS, behind PROXY
 * v1/v2 headers from a trusted and from an untrusted address.
 *
 * Then: the process still serves, the tunnel opened first still carries bytes, nothing was logged
 * at error level, no handler failed, no answer was a 5xx other than the documented 502/503 (nor a
 * WebSocket close 1011), and every connection, tunnel and console leg the corpus opened is gone.
 *
 * A bug found here goes into the hand-written list with the input that found it. Nothing in the
 * corpus is a name the test or the gateway would resolve: the gateway looks VM names up in its
 * directory, and the test connects to 127.0.0.1 only.
 */
import t from 'tap';
import fc from 'fast-check';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { setupDesk } from '../helpers/scenario.js';
import { basic, echoRoundTrip, rawRequest } from '../helpers/net.js';
import { until } from '../helpers/wait.js';
import { FUZZ_SEED, runs } from '../helpers/fuzz.js';
import { HOSTILE_HEADER_VALUES, HOSTILE_PATHS, HOSTILE_REQUESTS, HOSTILE_STRINGS, type HostileRequest, proxyV1 } from '../fixtures/hostile-corpus.js';
import { PROXY_V2_SIG } from '../fixtures/packets.js';
import type { TestGateway } from '../helpers/gateway.js';
import { WebSocket } from 'ws';

/** PROXY headers are believed from here (config proxyProtocol.trusted)... */
const TRUSTED = '127.0.0.1';
/** ...and not from here. */
const UNTRUSTED = '127.0.0.2';
/** Longer than every server deadline configured below: a connection still open then was forgotten. */
const CLIENT_TIMEOUT_MS = 5000;
/** After a 101, how long to wait for the first frame (a resumable session may send none) before calling the tunnel open. */
const WS_FRAME_WAIT_MS = 1000;
const PARALLEL = 6;

/** Statuses the contract documents for clients (sections 3-5), plus the HTTP server's own 408 and 431. */
const DOCUMENTED_STATUS = new Set([101, 200, 301, 304, 400, 401, 403, 404, 405, 407, 408, 413, 429, 431, 502, 503]);
/** WebSocket close codes of CONTRACT section 4 and gateway/errors.ts; 1011 (internal) is not among them. */
const DOCUMENTED_CLOSE = new Set([1000, 1001, 1008, 1009, 1013, 4001, 4003, 4004, 4401, 4502, 4503]);

interface Case extends HostileRequest {
  readonly from: string;
  readonly servername?: string;
}

interface Outcome {
  /** HTTP status, or what happened instead. */
  readonly answer: number | 'closed' | 'timeout';
  /** The close code of a refused WebSocket tunnel, or 'open'. */
  readonly ws?: number | 'open';
}

// ---------------------------------------------------------------------------------------------
// The generated corpus

const latin1Text = (maxLength: number): fc.Arbitrary<string> =>
  fc.string({ unit: fc.integer({ min: 0x20, max: 0xff }).filter((c) => c !== 0x7f).map((c) => String.fromCharCode(c)), maxLength });
const hostile = fc.constantFrom(...HOSTILE_STRINGS);
const escapes = fc
  .array(fc.oneof(fc.constantFrom('%', '%E0%A4%A', '%ZZ', '%00', '%2F', '%2e%2e', '%C0%AF', '%ED%A0%80', '%F0%9F%98%80', '[', ']', '//', '..', '\u00e9', '\u212A'), fc.stringMatching(/^[a-z0-9-]{0,6}$/)), { maxLength: 8 })
  .map((a) => a.join(''));
const segment = fc.oneof(fc.constantFrom('desk', 'DESK', 'nosuchvm', 'vnc', 'spice', 'rdp', 'VNC', ''), escapes, hostile);
const ticketish = fc.oneof(fc.constantFrom('{{TICKET}}', '{{TICKET}}', '{{TICKET_UPPER}}', '{{RESUME}}', ''), fc.stringMatching(/^[a-z2-7]{50}$/), escapes, hostile);
const query = fc
  .array(fc.tuple(fc.constantFrom('ticket', 'ticket', 'resume', 'session', 'received', 'protocol', 'proxy', 'TICKET', ''), fc.oneof(ticketish, fc.constantFrom('0', '-1', '1e400', 'NaN', 'spice'))), { maxLength: 4 })
  .map((kv) => (kv.length === 0 ? '' : `?${kv.map(([k, v]) => `${k}=${v}`).join('&')}`));
const path = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(segment, segment, query).map(([vm, p, q]) => `/tunnel/${vm}/${p}${q}`) },
  fc.tuple(fc.constantFrom('/api/vms/', '/api/users/', '/api/desktops/', '/api/login', '/api/me', '/healthz', '/metrics', '/vendor/novnc/', '/'), segment, fc.constantFrom('', '/tickets', '/console.vv', '/move'), query).map(([a, b, c, q]) => `${a}${b}${c}${q}`),
  fc.tuple(fc.constantFrom('https://', 'http://', 'ws://', '//', '///', 'https://user:pass@'), fc.oneof(fc.constantFrom('localhost', 'evil.test', '[::1]', '['), fc.domain()), path0()).map(([s, h, p]) => `${s}${h}${p}`),
  fc.constantFrom(...HOSTILE_PATHS),
  latin1Text(60),
);
function path0(): fc.Arbitrary<string> {
  return fc.tuple(segment, query).map(([s, q]) => `/tunnel/${s}/vnc${q}`);
}
const authority = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('desk', '{{TICKET}}.desk', '{{TICKET}}.DESK', '{{TICKET}}.nosuchvm', 'DESK'), fc.constantFrom('5900', '5900', '5901', '3389', '0', '65536', '', '5900:1')).map(([h, p]) => `${h}:${p}`) },
  fc.tuple(fc.oneof(fc.ipV4(), fc.ipV4Extended(), fc.ipV6().map((a) => `[${a}]`), fc.domain(), escapes, hostile), fc.oneof(fc.constant('5900'), fc.integer({ min: -1, max: 70000 }).map(String))).map(([h, p]) => `${h}:${p}`),
  fc.tuple(fc.constant('{{TICKET}}.'), fc.oneof(fc.ipV4(), fc.ipV4Extended(), escapes, hostile), fc.constant(':5900')).map((a) => a.join('')),
  latin1Text(40),
);

const HEADER_VALUES: Record<string, fc.Arbitrary<string>> = {
  host: fc.oneof(fc.constantFrom('localhost:{{PORT}}', 'localhost', '{{TICKET}}.desk:5900', '[::::]', 'a:99999', ''), fc.domain(), hostile),
  upgrade: fc.constantFrom('websocket', 'WebSocket', 'websocket, h2c', 'h2c', 'websocket ', '', 'webso\u00e7ket'),
  connection: fc.constantFrom('Upgrade', 'upgrade, keep-alive', 'close', 'keep-alive', 'Upgrade, HTTP2-Settings', ''),
  origin: fc.oneof(fc.constantFrom('https://localhost:{{PORT}}', 'https://127.0.0.1:{{PORT}}', 'null', 'https://evil.test', 'https://localhost:{{PORT}}@evil.test', 'https://[', 'file://', ''), fc.webUrl()),
  cookie: fc.oneof(fc.tuple(fc.constantFrom('oneport_session=', 'oneport_session=v1.', 'a=b; oneport_session=', '=', ';'), ticketish).map(([a, b]) => a + b), latin1Text(100)),
  'proxy-authorization': fc.oneof(
    fc.tuple(fc.constantFrom('alice', 'mallory', ''), ticketish).map(([u, s]) => basic(u, s)),
    ticketish.map((s) => `Bearer ${s}`),
    fc.constantFrom('Basic', 'Bearer', 'Basic Og==', 'Negotiate abc', 'Basic !!!'),
  ),
  authorization: fc.oneof(ticketish.map((s) => `Bearer ${s}`), fc.constantFrom('Bearer', 'Basic Og==', 'Bearer v1.e30.AAAA')),
  'desktop-protocol': fc.constantFrom('vnc', 'VNC', ' vnc ', 'rdp', 'spice', 'telnet', '', 'vnc, vnc', '__proto__'),
  'sec-websocket-key': fc.constantFrom('dGhlIHNhbXBsZSBub25jZQ==', 'abc', '', 'dGhlIHNhbXBsZSBub25jZQ'),
  'sec-websocket-version': fc.constantFrom('13', '13', '8', '', 'x', '13, 8'),
  'sec-websocket-protocol': fc.constantFrom('binary', 'oneport.v1', 'binary, oneport.v1', ',', 'a b', '', 'binary,,binary'),
  'sec-websocket-extensions': fc.constantFrom('permessage-deflate', 'permessage-deflate; client_max_window_bits=99', ';;', 'x; y="'),
  'content-length': fc.constantFrom('0', '2', '-1', '99999999999999999999', 'abc', '1, 2'),
  'transfer-encoding': fc.constantFrom('chunked', 'gzip, chunked', 'identity', 'chunked, chunked', ''),
  'content-type': fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', ''),
  'oneport-hop': fc.constantFrom('n2', '', 'test'),
  'oneport-user': fc.constantFrom('admin', 'alice', 'local-admin'),
  'oneport-forwarded-by': fc.constantFrom('n2', 'test'),
  'oneport-acting': fc.constantFrom('local-admin'),
  'oneport-client': fc.oneof(fc.ipV4(), hostile),
  'if-none-match': fc.constantFrom('*', ',,', 'W/', '"x", W/"y"'),
};
const headerName = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom(...Object.keys(HEADER_VALUES)).chain((n) => fc.mixedCase(fc.constant(n))) },
  fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}$/),
  latin1Text(10),
);
const header = headerName.chain((name) =>
  fc.tuple(fc.constant(name), fc.oneof({ weight: 8, arbitrary: HEADER_VALUES[name.toLowerCase()] ?? latin1Text(40) }, fc.constantFrom(...HOSTILE_HEADER_VALUES), latin1Text(60))),
);
const UPGRADE_HEADERS: Array<[string, string]> = [
  ['Upgrade', 'websocket'],
  ['Connection', 'Upgrade'],
  ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ=='],
  ['Sec-WebSocket-Version', '13'],
];

const request = fc
  .record({
    method: fc.oneof({ weight: 8, arbitrary: fc.constantFrom('GET', 'CONNECT') }, fc.constantFrom('POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'get', 'CONNECTX')),
    path,
    authority,
    version: fc.oneof({ weight: 16, arbitrary: fc.constant('HTTP/1.1') }, fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1 x', 'http/1.1', '')),
    // Mostly a well-formed upgrade, so the hostile parts reach the tunnel code behind ws.
    upgrade: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, fc.constant(false)),
    headers: fc.array(header, { maxLength: 6 }),
    eol: fc.oneof({ weight: 19, arbitrary: fc.constant('\r\n') }, fc.constantFrom('\n', '\r')),
    body: fc.oneof({ weight: 4, arbitrary: fc.constant('') }, fc.constantFrom('{}', '{"user":"alice","password":"x"}', 'zz\r\n', '\x81\x80\0\0\0\0'), latin1Text(40)),
    utf8: fc.boolean(),
  })
  .map((r) => {
    const target = r.method.startsWith('CONNECT') ? r.authority : r.path;
    const headers = [...(r.upgrade ? UPGRADE_HEADERS : []), ...r.headers];
    const text = `${r.method} ${target} ${r.version}${r.eol}${headers.map(([k, v]) => `${k}: ${v}${r.eol}`).join('')}${r.eol}${r.body}`;
    return r.utf8 ? Buffer.from(text, 'utf8') : text;
  });

const proxyPreamble = fc.oneof(
  fc.tuple(fc.ipV4(), fc.ipV4(), fc.nat({ max: 65535 }), fc.nat({ max: 65535 })).map(([s, d, sp, dp]) => proxyV1('TCP4', s, d, sp, dp)),
  fc.tuple(fc.ipV6(), fc.ipV6(), fc.nat({ max: 65535 }), fc.nat({ max: 65535 })).map(([s, d, sp, dp]) => proxyV1('TCP6', s, d, sp, dp)),
  fc.tuple(fc.constantFrom('TCP4', 'TCP6', 'UNKNOWN', 'UDP4'), hostile, latin1Text(20)).map(([f, s, rest]) => Buffer.from(`PROXY ${f} ${s} ${rest}\r\n`, 'latin1')),
  fc
    .tuple(fc.constantFrom(0x20, 0x21, 0x22, 0x11), fc.constantFrom(0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0xff), fc.uint8Array({ maxLength: 120 }))
    .map(([verCmd, fam, body]) => Buffer.concat([PROXY_V2_SIG, Buffer.from([verCmd, fam, body.length >> 8, body.length & 0xff]), body])),
);

const generatedCase: fc.Arbitrary<Omit<Case, 'name'>> = fc.record({
    transport: fc.constantFrom('clear', 'tls' as const),
    from: fc.oneof({ weight: 4, arbitrary: fc.constant(TRUSTED) }, fc.constant(UNTRUSTED)),
    preamble: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, proxyPreamble),
    request,
    halfClose: fc.boolean(),
    servername: fc.option(fc.constantFrom('localhost', 'desk', 'LOCALHOST', 'x.example.test', 'a'.repeat(63)), { nil: undefined }),
});

// ---------------------------------------------------------------------------------------------
// Sending one case

function render(template: string | Buffer, vars: Record<string, string>): Buffer {
  if (Buffer.isBuffer(template)) {
    const text = template.toString('latin1').replace(/\{\{(\w+)\}\}/g, (m, k: string) => vars[k] ?? m);
    return Buffer.from(text, 'latin1');
  }
  return Buffer.from(template.replace(/\{\{(\w+)\}\}/g, (m, k: string) => vars[k] ?? m), 'latin1');
}

/**
 * What the first WebSocket frame in `frames` says (server frames are unmasked): a close frame's
 * code, 'open' for any other frame (our probe echoed by the console, or a session hello), or
 * undefined while no whole frame header has arrived.
 */
function firstFrame(frames: Buffer): number | 'open' | undefined {
  if (frames.length < 2) return undefined;
  if ((frames[0]! & 0x0f) !== 0x8) return 'open';
  const length = frames[1]! & 0x7f;
  if (length < 2) return 1005;
  return frames.length < 4 ? undefined : frames.readUInt16BE(2);
}

/** A masked (as a client must) binary frame: the echo console sends it back once the tunnel is open. */
const PROBE_FRAME = Buffer.from([0x82, 0x84, 0, 0, 0, 0, 0x66, 0x75, 0x7a, 0x7a]);

/** Which of `events` `emitter` emits first; never rejects (events.once rejects on 'error'). */
function first(emitter: NodeJS.EventEmitter, events: readonly string[]): Promise<string> {
  return new Promise((resolve) => {
    const handlers = events.map((name) => {
      const h = (): void => {
        events.forEach((n, i) => emitter.removeListener(n, handlers[i]!));
        resolve(name);
      };
      emitter.on(name, h);
      return h;
    });
  });
}

async function send(gw: TestGateway, c: Case, vars: Record<string, string>): Promise<Outcome> {
  const raw = net.connect({ host: '127.0.0.1', port: gw.port, localAddress: c.from });
  raw.on('error', () => {});
  let socket: net.Socket | tls.TLSSocket = raw;
  try {
    if ((await first(raw, ['connect', 'close'])) !== 'connect') return { answer: 'closed' };
    if (c.preamble) raw.write(c.preamble);
    if (c.transport === 'tls') {
      const s = tls.connect({ socket: raw, ca: gw.caCert, servername: render(c.servername ?? 'localhost', vars).toString('latin1'), rejectUnauthorized: false });
      s.on('error', () => {});
      socket = s;
      if ((await first(s, ['secureConnect', 'close'])) !== 'secureConnect') return { answer: 'closed' };
    }
    socket.write(render(c.request, vars));
    if (c.halfClose) socket.end();
    return await readAnswer(socket);
  } finally {
    socket.destroy();
    raw.destroy();
  }
}

function readAnswer(socket: net.Socket | tls.TLSSocket): Promise<Outcome> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    let status: number | undefined;
    let frameTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => finish({ answer: status ?? 'timeout' }), CLIENT_TIMEOUT_MS);
    const finish = (o: Outcome): void => {
      clearTimeout(timer);
      clearTimeout(frameTimer);
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      resolve(o);
    };
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (status === undefined) {
        if (end < 0) return;
        status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(buf.subarray(0, end).toString('latin1'))?.[1] ?? 0);
        if (status !== 101) return finish({ answer: status });
        // Upgraded: either a close frame comes (refused), or the tunnel opens and echoes our probe.
        socket.write(PROBE_FRAME);
        frameTimer = setTimeout(() => finish({ answer: 101, ws: 'open' }), WS_FRAME_WAIT_MS);
      }
      const frame = firstFrame(buf.subarray(end + 4));
      if (frame !== undefined) finish({ answer: 101, ws: frame });
    };
    // Upgraded, then closed with no close frame: 1006, as a browser would report it.
    const onClose = (): void => finish({ answer: status ?? 'closed', ...(status === 101 ? { ws: 1006 } : {}) });
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/** Runs `work` over `items`, at most `n` at a time. */
async function pool<T, R>(items: readonly T[], n: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i]!);
    }
  });
  await Promise.all(lanes);
  return results;
}

async function total(m: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await m.get()).values.reduce((sum, v) => sum + v.value, 0);
}

function describe(c: Case): string {
  const bytes = (b: string | Buffer | undefined): string => (b === undefined ? '' : JSON.stringify(Buffer.isBuffer(b) ? b.toString('latin1') : b));
  return `${c.name} [${c.transport} from ${c.from}${c.servername ? ` sni=${c.servername}` : ''}${c.halfClose ? ' +FIN' : ''}] ${c.preamble ? `preamble=${bytes(c.preamble)} ` : ''}request=${bytes(c.request)}`;
}

/**
 * A WebSocket dropped without a close frame (1006) is the client's doing when it half-closed, or
 * sent bytes after its request that are no valid frame: `ws` then terminates the connection.
 */
function leftEarlyOrSentJunk(c: Case): boolean {
  const text = Buffer.isBuffer(c.request) ? c.request.toString('latin1') : c.request;
  const end = text.indexOf('\r\n\r\n');
  return c.halfClose === true || end < 0 || end + 4 < text.length;
}

// ---------------------------------------------------------------------------------------------

t.test('the hostile corpus, hand-written and generated from the committed seed, leaves the gateway serving and clean', async (t) => {
  const started = Date.now();
  const { gw, echo } = await setupDesk(t, {
    proxyProtocol: { trusted: [TRUSTED] },
    // Deadlines short, so nothing the corpus leaves half-open outlives the test's wait.
    detect: { timeoutMs: 1500 },
    nativeRdp: { openingTimeoutMs: 1500 },
    http: { headersTimeoutMs: 1500, requestTimeoutMs: 2000, keepAliveTimeoutMs: 1000 },
    tls: { handshakeTimeoutMs: 1500 },
    tunnel: { dialTimeoutMs: 1000, holdMs: 0, resume: { graceMs: 200 } },
    // Every junk ticket must reach the ticket check, not stop at the failure budget.
    limits: { authFailuresPerAddressPerMinute: 1_000_000 },
  });
  await gw.addUser('mallory', 'mallory-password-1');

  const { ticket } = await gw.ticket('alice', 'desk');
  const tunnel = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca: gw.caCert });
  t.equal(tunnel.status, 200, 'a tunnel is open before the corpus');
  t.teardown(() => tunnel.socket.destroy());
  t.equal((await echoRoundTrip(tunnel.socket, Buffer.from('before'))).toString(), 'before');
  const baseline = { connections: await total(gw.ctx.metrics.connectionsActive), tunnels: await total(gw.ctx.metrics.tunnelsActive), consoles: echo.open.size };

  const hand: Case[] = HOSTILE_REQUESTS.flatMap((c) => (c.preamble ? [{ ...c, from: TRUSTED }, { ...c, name: `${c.name} (untrusted)`, from: UNTRUSTED }] : [{ ...c, from: TRUSTED }]));
  const generated: Case[] = fc.sample(generatedCase, { seed: FUZZ_SEED, numRuns: runs(160) }).map((c, i) => ({ ...c, name: `generated #${i}` }));
  const corpus = [...hand, ...generated];

  const { resume } = await gw.ticket('alice', 'desk');
  const outcomes = await pool(corpus, PARALLEL, async (c) => {
    // A fresh ticket for each case: the hostile part sits next to a credential that would work.
    const fresh = (await gw.ticket('alice', 'desk')).ticket;
    const vars = { TICKET: fresh, TICKET_UPPER: fresh.toUpperCase(), RESUME: resume, PORT: String(gw.port) };
    return { c, o: await send(gw, c, vars) };
  });

  const bad: string[] = [];
  const seen = new Map<string, number>();
  for (const { c, o } of outcomes) {
    const key = o.ws === undefined ? String(o.answer) : `101/${o.ws}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    if (typeof o.answer === 'number' && !DOCUMENTED_STATUS.has(o.answer)) bad.push(`status ${o.answer}: ${describe(c)}`);
    if (typeof o.ws === 'number' && !DOCUMENTED_CLOSE.has(o.ws) && !(o.ws === 1006 && leftEarlyOrSentJunk(c))) bad.push(`close ${o.ws}: ${describe(c)}`);
    if (o.answer === 'timeout') bad.push(`still open after ${CLIENT_TIMEOUT_MS} ms: ${describe(c)}`);
  }
  t.comment(`seed ${FUZZ_SEED}: ${hand.length} hand-written + ${generated.length} generated cases; answers ${JSON.stringify(Object.fromEntries([...seen].sort()))}`);
  t.same(bad, [], 'every answer is a documented status or close code, and the server closed every connection in time');

  t.equal((await echoRoundTrip(tunnel.socket, Buffer.from('still here'))).toString(), 'still here', 'the tunnel opened first still carries bytes');
  const health = await rawRequest(gw.port, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', { ca: gw.caCert });
  t.equal(health.status, 200, 'the gateway still answers');
  health.socket.destroy();
  const errorLines = gw.logs.filter((l) => typeof l.level === 'number' && l.level >= 50);
  t.same(errorLines, [], 'nothing was logged at error level');
  t.equal(await total(gw.ctx.metrics.internalErrors), 0, 'oneport_internal_errors_total is 0');

  // Everything the corpus opened is released: connections, tunnels, console legs, parked sessions.
  await until(async () => (await total(gw.ctx.metrics.connectionsActive)) === baseline.connections, { timeoutMs: 8000 }).catch(() => {});
  t.equal(await total(gw.ctx.metrics.connectionsActive), baseline.connections, 'open connections back to the baseline');
  await until(async () => (await total(gw.ctx.metrics.tunnelsActive)) === baseline.tunnels && echo.open.size === baseline.consoles && gw.ctx.sessions.parkedCount === 0, { timeoutMs: 8000 }).catch(() => {});
  t.equal(await total(gw.ctx.metrics.tunnelsActive), baseline.tunnels, 'open tunnels back to the baseline');
  t.equal(echo.open.size, baseline.consoles, 'console connections back to the baseline');
  t.equal(gw.ctx.sessions.parkedCount, 0, 'no parked session left');
  t.comment(`corpus run in ${Date.now() - started} ms`);

  tunnel.socket.end();
  await once(tunnel.socket, 'close');
});

t.test(
  'a request body that breaks off (client gone, timeout, bad chunk) is not an internal error',
  async (t) => {
    const { gw } = await setupDesk(t);
    // Found by the corpus: a body shorter than its Content-Length, then FIN (the server's own
    // requestTimeout takes the same path); and a chunked body whose chunk size is not hex.
    const inputs = [
      'POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"us',
      'POST /api/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
    ];
    for (const [i, input] of inputs.entries()) {
      const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.caCert, servername: 'localhost' });
      s.on('error', () => {});
      await once(s, 'secureConnect');
      s.end(input);
      // handleApi counts every request it finished, whatever the outcome.
      await until(async () => (await total(gw.ctx.metrics.httpRequests)) > i, { timeoutMs: 5000 });
      s.destroy();
    }
    t.same(gw.logs.filter((l) => typeof l.level === 'number' && l.level >= 50).map((l) => l.msg), [], 'nothing logged at error level');
    const statuses = (await gw.ctx.metrics.httpRequests.get()).values.map((v) => v.labels.status);
    t.notOk(statuses.includes('500'), `no request counted as a 500 (got ${JSON.stringify(statuses)})`);
  },
);

t.test('a text frame of any JSON value on an open oneport.v1 tunnel is ignored, not a process exit', async (t) => {
  const { gw } = await setupDesk(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, ['oneport.v1'], { ca: gw.caCert });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  await once(ws, 'message'); // hello
  // Found by the corpus: "null" threw a TypeError in the ws message handler, uncaught.
  for (const text of ['null', '1', '"ack"', '[]', 'true', '{"type":null}', '{"type":"ack","received":null}']) ws.send(text);
  const echoed = once(ws, 'message');
  ws.send(Buffer.from('still here'), { binary: true });
  const [data] = (await echoed) as [Buffer];
  t.equal(data.toString(), 'still here', 'the session carries on');
  t.equal(await total(gw.ctx.metrics.internalErrors), 0, 'nothing failed');
});
