/**
 * Property tests over every parser a client reaches before it has authenticated (security issue
 * 10): first-byte detectors and the listener's decision, native RDP openings, CONNECT authorities and credentials,
 * tickets, tokens, cookies, request targets, %-escapes, Host and Origin. Each must be total over
 * hostile input: it returns its documented answer (a three-way detection, `undefined`, an invalid
 * check result) or throws its documented OneportError, never anything else, and what it returns is
 * bounded and well-formed.
 *
 * The seed is committed (test/helpers/fuzz.ts), so `npm test` runs the same corpus every time; set
 * ONEPORT_FUZZ_SEED / ONEPORT_FUZZ_SCALE to explore further.
 */
import t from 'tap';
import fc from 'fast-check';
import { isIP } from 'node:net';
import type { IncomingMessage } from 'node:http';
import type { Detection, Detector } from '../../protocols/detector.js';
import { tlsDetector } from '../../protocols/tls.js';
import { HTTP_METHODS, httpDetector } from '../../protocols/http.js';
import { V1_MAX, V2_DEFAULT_MAX, V2_SIGNATURE, proxyDetector, type ProxyInfo } from '../../protocols/proxy.js';
import { spiceDetector } from '../../protocols/spice.js';
import { vncDetector } from '../../protocols/vnc.js';
import {
  PCB_MAX_CHARS, encodeConnectionRequest, encodePreconnectionPdu, parseConnectionRequest, parseRdpOpening, rdpDetector, rdpPreconnectionDetector, requestForConsole,
} from '../../protocols/rdp.js';
import { MAX_OPENING_BYTES, nativeRequest } from '../../gateway/rdp/native.js';
import { probeAnswer } from '../../protocols/probe.js';
import { decide, type Verdict } from '../../gateway/listener.js';
import { checkVmState, isAddressLiteral, isProtocol, parseAuthority, selectEndpoint, splitHostTicket } from '../../gateway/routing.js';
import { parseProxyAuthorization } from '../../gateway/http/connect.js';
import { originAllowed } from '../../gateway/http/websocket.js';
import { SESSION_COOKIE, readCookie } from '../../gateway/http/cookies.js';
import { decodePathSegment, parseRequestUrl, pathOf, safeHost } from '../../gateway/http/respond.js';
import { TICKET_LENGTH, TICKET_RE, checkTicket, mintTicket, ticketProtocol } from '../../gateway/auth/tickets.js';
import { mintToken, verifyToken } from '../../gateway/auth/tokens.js';
import { base32Decode, base32Encode } from '../../gateway/auth/base32.js';
import { isOneportError, type ErrorCode } from '../../gateway/errors.js';
import { PROTOCOLS, VM_STATES, type Endpoint, type KeyRing, type VmRecord } from '../../gateway/directory/directory.js';
import type { GatewayContext } from '../../gateway/context.js';
import { NodeRequestError, certificateMatchesName, createNodeRequest, readNodeRequest } from '../../certs/ca.js';
import { formatJoinToken, mintJoinToken, parseJoinToken } from '../../gateway/cluster/join.js';
import { testPki } from '../helpers/certs.js';
import { fuzz } from '../helpers/fuzz.js';
import { HOSTILE_HEADER_VALUES, HOSTILE_PATHS, HOSTILE_STRINGS } from '../fixtures/hostile-corpus.js';

// ---------------------------------------------------------------------------------------------
// Generators

/** Any string a client can make a parser see: ASCII, Latin-1 (what Node decodes headers as), full Unicode, lone surrogates. */
const anyText = (maxLength = 300): fc.Arbitrary<string> =>
  fc.oneof(
    fc.string({ unit: 'binary', maxLength }),
    fc.string({ unit: 'grapheme', maxLength }),
    fc.string({ unit: fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c)), maxLength }),
    // Lone surrogates: not valid UTF-16, still a JS string.
    fc.string({ unit: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)), maxLength: 4 }),
    fc.constantFrom(...HOSTILE_STRINGS),
  );

/** Strings built from the characters parsers split on, so the interesting branches are reached. */
const syntaxSoup = (alphabet: string, maxLength = 80): fc.Arbitrary<string> =>
  fc.array(fc.oneof(fc.constantFrom(...alphabet.split('')), fc.string({ maxLength: 3 })), { maxLength }).map((a) => a.join(''));

/** %-escapes, valid and not: the class of input that once stopped the process. */
const percentSoup = fc
  .array(
    fc.oneof(
      fc.integer({ min: 0, max: 255 }).map((b) => `%${b.toString(16).padStart(2, '0')}`),
      fc.integer({ min: 0, max: 255 }).map((b) => `%${b.toString(16).toUpperCase()}`),
      fc.constantFrom('%', '%%', '%G0', '%0', '%E0%A4', '%C0%AF', '%ED%A0%80', '%F4%90%80%80', '%u0041', '/', '.', '..', '[', ']', '?', '#', '\\', ' '),
      fc.string({ maxLength: 3 }),
    ),
    { maxLength: 40 },
  )
  .map((a) => a.join(''));

/** A host as a CONNECT client might write it: names, tickets, every spelling of an address. */
const hostLike = fc.oneof(
  fc.domain(),
  fc.ipV4(),
  fc.ipV4Extended(),
  fc.ipV6().map((a) => `[${a}]`),
  fc.ipV6(),
  fc.tuple(fc.stringMatching(TICKET_RE), fc.domain()).map(([tk, d]) => `${tk}.${d}`),
  syntaxSoup('abcz09.-_%:[]@'),
  anyText(40),
);
const portLike = fc.oneof(fc.integer({ min: -1, max: 70000 }).map(String), fc.constantFrom('', '0', '00', '05900', '5900 ', '+5900', '0x16', '1e3', '65535', '65536', '99999999999'), anyText(6));
const authorityLike = fc.oneof(fc.tuple(hostLike, portLike).map(([h, p]) => `${h}:${p}`), hostLike, anyText());

// Fixed keys, so a failure reproduces from the seed alone.
const keys: KeyRing = {
  current: { id: 3, secret: Buffer.alloc(32, 0x11).toString('base64'), createdAt: 0 },
  previous: [{ id: 2, secret: Buffer.alloc(32, 0x22).toString('base64'), createdAt: 0 }],
};

/** Throws only OneportErrors with one of `codes`; returns the value, or undefined for such an error. */
function documented<T>(codes: readonly ErrorCode[], fn: () => T): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (isOneportError(e) && codes.includes(e.code)) return undefined;
    throw e;
  }
}

const KINDS = ['match', 'no', 'more'];

// ---------------------------------------------------------------------------------------------
// protocols/: detectors, any bytes, any split

/** Bytes that start like what a detector looks for, then go wrong somewhere. */
const headLike = fc.oneof(
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 600 }) },
  fc.tuple(fc.constantFrom('PROXY ', 'PROXY TCP4 ', 'PROXY TCP6 ', 'PROXY UNKNOWN', 'GET ', 'CONNECT ', 'RFB 003.', 'REDQ'), anyText(140)).map(([p, s]) => Buffer.from(p + s, 'latin1')),
  fc
    .tuple(fc.constantFrom('TCP4', 'TCP6', 'UNKNOWN', 'tcp4', ''), fc.oneof(fc.ipV4(), fc.ipV6(), anyText(20)), fc.oneof(fc.ipV4(), fc.ipV6()), portLike, portLike, fc.constantFrom('\r\n', '\n', '\r', ' \r\n', ''))
    .map(([fam, src, dst, sp, dp, end]) => Buffer.from(`PROXY ${fam} ${src} ${dst} ${sp} ${dp}${end}`, 'utf8')),
  fc
    .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 700 }))
    .map(([verCmd, fam, len, body]) => Buffer.concat([V2_SIGNATURE, Buffer.from([verCmd, fam, len >> 8, len & 0xff]), body])),
  fc.tuple(fc.integer({ min: 0, max: 6 }), fc.uint8Array({ maxLength: 40 })).map(([v, rest]) => Buffer.concat([Buffer.from([0x16, 0x03, v]), rest])),
  // Native RDP: a TPKT header with any length and LI, then anything; a preconnection PDU's fixed part, then anything.
  fc
    .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 255 }), fc.constantFrom(0xe0, 0xd0, 0x00), fc.uint8Array({ maxLength: 300 }))
    .map(([len, li, code, rest]) => Buffer.concat([Buffer.from([0x03, 0x00, len >> 8, len & 0xff, li, code]), rest])),
  fc
    .tuple(fc.integer({ min: 0, max: 1200 }), fc.constantFrom(1, 2, 3), fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 1100 }))
    .map(([size, version, cch, rest]) => {
      const fixed = Buffer.alloc(18);
      fixed.writeUInt32LE(size, 0);
      fixed.writeUInt32LE(version, 8);
      fixed.writeUInt16LE(cch, 16);
      return Buffer.concat([fixed, rest]);
    }),
);

/** Cut `bytes` at the given points (sorted, deduplicated) into consecutive chunks. */
function split(bytes: Uint8Array, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    chunks.push(Buffer.from(bytes.subarray(from, p)));
    from = p;
  }
  return chunks;
}

function checkInfo(name: string, head: Uint8Array, d: Detection<unknown>): boolean {
  if (!KINDS.includes(d.kind)) return false;
  if (d.kind !== 'match') return true;
  switch (name) {
    case 'tls': {
      const { recordLength } = d.info as { recordLength: number };
      return Number.isInteger(recordLength) && recordLength >= 1 && recordLength <= 16384;
    }
    case 'http':
      return (HTTP_METHODS as readonly string[]).includes((d.info as { method: string }).method);
    case 'proxy': {
      const p = d.info as ProxyInfo;
      // proxyDetector is the default-configured detector.
      const max = p.version === 1 ? V1_MAX : V2_DEFAULT_MAX;
      if (!Number.isInteger(p.headerLength) || p.headerLength < 8 || p.headerLength > head.length || p.headerLength > max) return false;
      if (p.source === undefined) return true;
      return isIP(p.source.address) !== 0 && p.source.address.length <= 60 && Number.isInteger(p.source.port) && p.source.port >= 0 && p.source.port <= 65535;
    }
    case 'rdp': {
      const { length } = d.info as { length: number };
      return Number.isInteger(length) && length >= 11 && length <= 259;
    }
    case 'rdp-preconnection': {
      const p = d.info as { length: number; version: number };
      return (p.version === 1 && p.length === 16) || (p.version === 2 && p.length >= 18 && p.length <= 18 + 2 * PCB_MAX_CHARS && p.length % 2 === 0);
    }
    case 'vnc': {
      const v = d.info as { major: number; minor: number };
      return Number.isInteger(v.major) && Number.isInteger(v.minor) && v.major >= 0 && v.major <= 999 && v.minor >= 0 && v.minor <= 999;
    }
    default:
      return d.info === undefined;
  }
}

const detectors: Array<Detector<unknown>> = [tlsDetector, httpDetector, proxyDetector, spiceDetector, vncDetector, rdpDetector, rdpPreconnectionDetector] as Array<Detector<unknown>>;

t.test('detectors: total, three-way, bounded answers, and a match or a no never changes with more bytes', async (t) => {
  fc.assert(
    fc.property(headLike, fc.uint8Array({ maxLength: 64 }), (head, more) => {
      for (const det of detectors) {
        const d = det.detect(head);
        if (!checkInfo(det.name, head, d)) throw new Error(`${det.name}: unexpected answer ${JSON.stringify(d)}`);
        if (d.kind === 'more') continue;
        // The listener acts on the first non-"more" answer: longer input must not change it.
        const longer = det.detect(Buffer.concat([head, more]));
        if (JSON.stringify(longer) !== JSON.stringify(d)) throw new Error(`${det.name}: ${JSON.stringify(d)} became ${JSON.stringify(longer)} with more bytes`);
      }
    }),
    fuzz(1500),
  );
  t.pass('no input made a detector throw, squash its answer, or change its mind');
});

t.test('native RDP openings: any bytes parse to done, more or error, and a parsed one becomes a request or a documented refusal', async (t) => {
  const codes: ErrorCode[] = ['ONEPORT_ERR_BAD_REQUEST', 'ONEPORT_ERR_AUTH_REQUIRED', 'ONEPORT_ERR_ADDRESS_LITERAL'];
  const token = fc.oneof(
    fc.tuple(fc.stringMatching(TICKET_RE), hostLike).map(([tk, h]) => `${tk}.${h}`),
    anyText(60),
    syntaxSoup('abz27.-:[]\r\n\0 '),
  );
  fc.assert(
    fc.property(
      fc.oneof(
        headLike,
        fc.tuple(token, fc.constantFrom('raw', 'msts', 'mstshash' as const), fc.option(token)).map(([text, kind, blob]) => {
          // Only text an encoder accepts: Latin-1 without CR or LF (anything else is not a token line).
          const value = text.replace(/[\r\n]/g, '').replace(/[^\x00-\xff]/g, '?').slice(0, 200);
          const cr = encodeConnectionRequest({ dstRef: 0, srcRef: 0, classOption: 0, token: { kind, value }, negotiation: { flags: 0, requestedProtocols: 3, correlationId: null } });
          return blob === null ? cr : Buffer.concat([encodePreconnectionPdu({ id: 0, blob: blob.slice(0, 200) }), cr]);
        }),
      ),
      (bytes) => {
        const p = parseRdpOpening(bytes);
        if (p.kind !== 'done') return p.kind === 'more' || p.kind === 'error';
        if (p.length > MAX_OPENING_BYTES || p.length > bytes.length) return false;
        const r = documented(codes, () => nativeRequest(p.value, '192.0.2.1'));
        if (r !== undefined && (!TICKET_RE.test(r.credential.kind === 'ticket' ? r.credential.ticket : '') || isAddressLiteral(r.vmName) || r.hints.protocol !== 'rdp')) return false;
        // What the console would get parses back, without a routing token that could carry a ticket.
        const forwarded = parseConnectionRequest(requestForConsole(p.value));
        return forwarded.kind === 'done' && (forwarded.value.token === null || forwarded.value.token.kind === 'mstshash');
      },
    ),
    fuzz(1500),
  );
  t.pass('no opening made a parser throw, or handed the console a ticket');
});

t.test('console probes: any answer from a console is match, no or more, never a throw', async (t) => {
  fc.assert(
    fc.property(fc.constantFrom('vnc', 'spice', 'rdp' as const), headLike, (protocol, head) => {
      const d = probeAnswer(protocol, head);
      return KINDS.includes(d.kind);
    }),
    fuzz(600),
  );
  t.pass();
});

/**
 * What the listener does with a connection's bytes (gateway/listener.ts detect + onProxy), as a
 * pure fold: decide after each chunk, stop at the first answer or at maxBytes, and after a trusted
 * PROXY header go on with what follows it, PROXY no longer allowed.
 */
function listen(chunks: Buffer[], maxBytes: number): string {
  const trail: string[] = [];
  let head = Buffer.alloc(0);
  let allowProxy = true;
  let i = 0;
  for (;;) {
    let v: Verdict = decide(head.subarray(0, maxBytes), allowProxy);
    while (v.kind === 'more' && head.length < maxBytes && i < chunks.length) {
      head = Buffer.concat([head, chunks[i++]!]);
      v = decide(head.subarray(0, maxBytes), allowProxy);
    }
    if (v.kind === 'more') {
      trail.push(head.length >= maxBytes ? 'reject' : 'more');
      return trail.join('>');
    }
    if (v.kind === 'reject') {
      trail.push('reject');
      return trail.join('>');
    }
    trail.push(`${v.route}${JSON.stringify(v.info)}`);
    if (v.route !== 'proxy') return trail.join('>');
    head = head.subarray((v.info as ProxyInfo).headerLength);
    allowProxy = false;
  }
}

t.test('the listener decision: any split of the same bytes, the same route (PROXY header first too)', async (t) => {
  const stream = fc.oneof(headLike, fc.tuple(headLike, headLike).map(([a, b]) => Buffer.concat([a, b])));
  fc.assert(
    fc.property(stream, fc.array(fc.nat(), { maxLength: 8 }), fc.constantFrom(64, 107, 4096), (bytes, cuts, maxBytes) => {
      const whole = listen([Buffer.from(bytes)], maxBytes);
      const pieces = listen(split(bytes, cuts), maxBytes);
      if (whole !== pieces) throw new Error(`whole: ${whole}; in pieces ${JSON.stringify(cuts)}: ${pieces}`);
    }),
    fuzz(1500),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------
// gateway/routing.ts

t.test('parseAuthority: any request-target gives undefined or a bounded, lowercased authority', async (t) => {
  fc.assert(
    fc.property(authorityLike, (target) => {
      const a = parseAuthority(target);
      if (a === undefined) return true;
      return (
        a.host.length > 0 &&
        a.host.length <= 300 &&
        /^[a-z0-9._%:-]+$/.test(a.host) &&
        Number.isInteger(a.port) &&
        a.port >= 1 &&
        a.port <= 65535 &&
        a.literal === isAddressLiteral(a.host)
      );
    }),
    fuzz(3000),
  );
  t.pass();
});

t.test('every spelling of an address is a literal, never a VM name (CONTRACT section 2)', async (t) => {
  const address = fc.oneof(
    fc.ipV4(),
    fc.ipV4Extended(),
    fc.ipV6().map((a) => `[${a}]`),
    fc.tuple(fc.ipV6(), fc.constantFrom('%25eth0', '%1', '%lo')).map(([a, z]) => `[${a}${z}]`),
    fc.integer({ min: 0, max: 0xffffffff }).map(String),
    fc.integer({ min: 0, max: 0xffffffff }).map((n) => `0x${n.toString(16)}`),
  );
  fc.assert(
    fc.property(address, fc.integer({ min: 1, max: 65535 }), fc.boolean(), (addr, port, upper) => {
      const target = `${upper ? addr.toUpperCase() : addr}:${port}`;
      const a = parseAuthority(target);
      // Refused outright is fine too; parsed, it must be flagged.
      return a === undefined || a.literal;
    }),
    fuzz(1500),
  );
  t.pass();
});

t.test('splitHostTicket, isAddressLiteral, isProtocol: total; a split is exactly <ticket>.<vm>', async (t) => {
  fc.assert(
    fc.property(hostLike, (host) => {
      if (typeof isAddressLiteral(host) !== 'boolean' || typeof isProtocol(host) !== 'boolean') return false;
      const s = splitHostTicket(host);
      return s === undefined || (TICKET_RE.test(s.ticket) && s.vm.length > 0 && `${s.ticket}.${s.vm}` === host);
    }),
    fuzz(2000),
  );
  t.pass();
});

t.test('selectEndpoint and checkVmState: any hints give an endpoint of the VM or a documented refusal', async (t) => {
  const endpoint = fc.record({
    protocol: fc.constantFrom(...PROTOCOLS),
    host: fc.constant('127.0.0.1'),
    port: fc.integer({ min: 1, max: 65535 }),
    publishedPort: fc.oneof(fc.integer({ min: 1, max: 65535 }), fc.constantFrom(3389, 5900, 5901)),
  });
  const vm = fc
    .tuple(fc.uniqueArray(endpoint, { minLength: 1, maxLength: 3, selector: (e) => e.protocol }), fc.constantFrom(...VM_STATES))
    .map(([endpoints, state]): VmRecord => ({ name: 'desk', node: 'n', state, epoch: 0, endpoints, users: [], groups: [] }));
  const hint = fc.option(fc.constantFrom(...PROTOCOLS), { nil: undefined });
  fc.assert(
    fc.property(vm, hint, fc.option(fc.integer({ min: 0, max: 70000 }), { nil: undefined }), hint, fc.boolean(), (v, protocol, port, ticketProtocol, hold) => {
      const e: Endpoint | undefined = documented(['ONEPORT_ERR_NO_SUCH_PROTOCOL', 'ONEPORT_ERR_PORT_NOT_PUBLISHED'], () => selectEndpoint(v, { protocol, port, ticketProtocol }));
      documented(['ONEPORT_ERR_VM_RECOVERING', 'ONEPORT_ERR_VM_DOWN'], () => checkVmState(v, { hold }));
      return e === undefined || (v.endpoints.includes(e) && (protocol === undefined || e.protocol === protocol));
    }),
    fuzz(1000),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------
// gateway/http/connect.ts: Proxy-Authorization

t.test('parseProxyAuthorization: Basic, Bearer, or a 401 (407 on the wire), never another throw', async (t) => {
  const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
  const header = fc.oneof(
    anyText(),
    fc.tuple(fc.constantFrom('Basic', 'basic', 'BASIC', 'Bearer', 'bearer', 'Digest', 'Negotiate', 'NTLM', ''), fc.constantFrom(' ', '  ', '\t', ''), fc.oneof(anyText(120), fc.base64String({ maxLength: 120 }), anyText(80).map(b64)))
      .map(([s, sp, v]) => `${s}${sp}${v}`),
    fc.constantFrom(...HOSTILE_HEADER_VALUES),
  );
  fc.assert(
    fc.property(fc.option(header, { nil: undefined }), (h) => {
      const c = documented(['ONEPORT_ERR_AUTH_REQUIRED'], () => parseProxyAuthorization(h));
      if (c === undefined) return true;
      if (c.kind === 'bearer') return c.token.length > 0 && !/\s/.test(c.token);
      return typeof c.user === 'string' && typeof c.secret === 'string' && !c.user.includes(':');
    }),
    fuzz(2000),
  );
  // Round trip: what a client encodes comes back (user names cannot hold ':', RFC 7617).
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }).filter((u) => !u.includes(':')), fc.string({ maxLength: 80 }), (user, secret) => {
      const c = parseProxyAuthorization(`Basic ${b64(`${user}:${secret}`)}`);
      return c?.kind === 'basic' && c.user === user && c.secret === secret;
    }),
    fuzz(500),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------
// gateway/auth: tickets and tokens

t.test('tickets: junk is invalid, never a throw; ticketProtocol and base32 are total', async (t) => {
  const ticketLike = fc.oneof(
    anyText(80),
    // The exact shape (passes TICKET_RE): reaches base32, the key lookup and the MAC.
    fc.stringMatching(TICKET_RE),
    fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz234567'.split('')), minLength: TICKET_LENGTH - 2, maxLength: TICKET_LENGTH + 2 }),
    fc.uint8Array({ minLength: 31, maxLength: 31 }).map((b) => base32Encode(b)),
  );
  fc.assert(
    fc.property(ticketLike, fc.oneof(fc.constant('desk'), anyText(40)), (ticket, vm) => {
      const c = checkTicket(keys, ticket, vm);
      const p = ticketProtocol(ticket);
      const d = base32Decode(ticket, 31);
      return (
        !c.ok &&
        ['malformed', 'unknown-key', 'bad-mac', 'expired'].includes(c.reason) &&
        (p === undefined || isProtocol(p)) &&
        (d === undefined || (d.length === 31 && base32Encode(d) === ticket))
      );
    }),
    fuzz(2000),
  );
  // A real ticket with any one character changed, or checked against another VM, is refused.
  const real = mintTicket(keys, 'desk', 'vnc', 60_000, 1_000_000).ticket;
  fc.assert(
    fc.property(fc.nat({ max: TICKET_LENGTH - 1 }), fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz234567'.split('')), fc.oneof(fc.constant('desk'), fc.domain()), (i, c, vm) => {
      const forged = real.slice(0, i) + c + real.slice(i + 1);
      const check = checkTicket(keys, forged, vm, 1_000_000);
      return forged === real && vm === 'desk' ? check.ok : !check.ok;
    }),
    fuzz(500),
  );
  t.pass();
});

t.test('tokens: junk, tampered and cross-purpose tokens are undefined, never a throw', async (t) => {
  const b64u = (s: string): string => Buffer.from(s, 'utf8').toString('base64url');
  const real = mintToken(keys, 'resume', { sub: 'alice', vm: 'desk' }, 600_000, 1_000_000).token;
  const [, realBody = '', realMac = ''] = real.split('.');
  const tokenLike = fc.oneof(
    anyText(200),
    syntaxSoup('v1.-_=abcXYZ09', 60),
    // Structured: any JSON payload, with junk or the real MAC.
    fc.tuple(fc.oneof(fc.jsonValue({ maxDepth: 4 }).map((j) => JSON.stringify(j) ?? 'null'), anyText(60)), fc.oneof(anyText(50), fc.constant(realMac))).map(([body, mac]) => `v1.${b64u(body)}.${mac}`),
    fc.record({ k: fc.oneof(fc.constant(3), fc.constant(2), fc.integer()), sub: fc.oneof(fc.string(), fc.integer()), sid: fc.string(), iat: fc.integer(), exp: fc.oneof(fc.integer(), fc.constant(Number.MAX_SAFE_INTEGER)) }).map((p) => `v1.${b64u(JSON.stringify(p))}.${realMac}`),
    // The real body with a MAC one character off, or the real MAC on a body one character off.
    fc.tuple(fc.nat(), fc.constantFrom('A', 'b', '-', '_', '0')).map(([i, c]) => {
      const j = i % realMac.length;
      return `v1.${realBody}.${realMac.slice(0, j)}${c}${realMac.slice(j + 1)}`;
    }),
    // The real MAC with a character outside the alphabet slipped in: Node's decoder skips it.
    fc.tuple(fc.nat(), fc.constantFrom('!', '=', '==', ' ', '*', '\u00e9', '+', '/')).map(([i, c]) => {
      const j = i % (realMac.length + 1);
      return `v1.${realBody}.${realMac.slice(0, j)}${c}${realMac.slice(j)}`;
    }),
    fc.string({ minLength: 1000, maxLength: 1100 }).map((s) => `v1.${s}.x`),
  );
  fc.assert(
    fc.property(tokenLike, fc.constantFrom('session', 'resume' as const), (token, purpose) => {
      const p = verifyToken(keys, purpose, token, 1_000_000);
      return p === undefined || (token === real && purpose === 'resume');
    }),
    fuzz(2000),
  );
  t.equal(verifyToken(keys, 'resume', real, 1_000_000)?.sub, 'alice', 'the real token still verifies');
  t.equal(verifyToken(keys, 'session', real, 1_000_000), undefined, 'but not as a session token');
});

// ---------------------------------------------------------------------------------------------
// gateway/http/cookies.ts and respond.ts

t.test('readCookie: any Cookie header gives undefined or a trimmed value without a separator', async (t) => {
  const header = fc.oneof(
    anyText(400),
    syntaxSoup(`;= ${SESSION_COOKIE}v1.abc"\t,`, 40),
    // Around the 8 KiB bound.
    fc.integer({ min: 8170, max: 8200 }).map((n) => `${SESSION_COOKIE}=${'x'.repeat(n - SESSION_COOKIE.length - 1)}`),
    fc.constantFrom(...HOSTILE_HEADER_VALUES),
  );
  fc.assert(
    fc.property(fc.option(header, { nil: undefined }), (h) => {
      const v = readCookie(h, SESSION_COOKIE);
      return v === undefined || (h !== undefined && h.length <= 8192 && !v.includes(';') && v === v.trim() && v.length < h.length);
    }),
    fuzz(2000),
  );
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.stringMatching(/^[a-z_]{1,10}$/), fc.stringMatching(/^[A-Za-z0-9._-]{0,20}$/)), { maxLength: 5 }), fc.stringMatching(/^[A-Za-z0-9._-]{1,60}$/), (others, token) => {
      const jar = [...others.filter(([k]) => k !== SESSION_COOKIE).map(([k, v]) => `${k}=${v}`), `${SESSION_COOKIE}=${token}`];
      return readCookie(jar.join('; '), SESSION_COOKIE) === token;
    }),
    fuzz(300),
  );
  t.pass();
});

t.test('request targets and %-escapes: a URL, a decoded segment, or a 400, never another throw', async (t) => {
  const target = fc.oneof(
    anyText(200),
    percentSoup.map((p) => `/tunnel/${p}/vnc`),
    percentSoup.map((p) => `/api/vms/${p}`),
    fc.tuple(fc.constantFrom('', '/', '//', '///', 'http://', 'https://', 'ws://', 'file:', '*', 'javascript:', '\\\\'), percentSoup).map(([a, b]) => a + b),
    fc.webUrl({ withQueryParameters: true, withFragments: true }),
    fc.constantFrom(...HOSTILE_PATHS),
    fc.constant(undefined),
  );
  fc.assert(
    fc.property(target, (tgt) => {
      const url = documented(['ONEPORT_ERR_BAD_REQUEST'], () => parseRequestUrl(tgt));
      const path = pathOf({ url: tgt } as IncomingMessage);
      if (path.includes('?')) return false;
      if (url === undefined) return true;
      for (const seg of url.pathname.split('/')) {
        const d = documented(['ONEPORT_ERR_BAD_REQUEST'], () => decodePathSegment(seg));
        if (d !== undefined && d.length > seg.length) return false;
      }
      return typeof url.searchParams.get('ticket') !== 'number';
    }),
    fuzz(2000),
  );
  // A segment of a parsed path (what the routes decode) decodes to well-formed Unicode, or is a
  // 400: no lone surrogate gets through to a VM name, a log line or a re-encoded URL.
  fc.assert(
    fc.property(fc.oneof(percentSoup, anyText(60)), (text) => {
      const url = documented(['ONEPORT_ERR_BAD_REQUEST'], () => parseRequestUrl(`/${text}`));
      for (const seg of url?.pathname.split('/') ?? []) {
        const d = documented(['ONEPORT_ERR_BAD_REQUEST'], () => decodePathSegment(seg));
        if (d !== undefined && decodeURIComponent(encodeURIComponent(d)) !== d) return false;
      }
      return true;
    }),
    fuzz(2000),
  );
  t.pass();
});

t.test('safeHost: echoes only a host[:port] that makes a well-formed https URL with that very host', async (t) => {
  const host = fc.oneof(
    anyText(80),
    hostLike,
    fc.tuple(hostLike, portLike).map(([h, p]) => `${h}:${p}`),
    syntaxSoup('ab09.-:[]', 30),
    fc.string({ minLength: 250, maxLength: 300 }),
    fc.constantFrom(...HOSTILE_HEADER_VALUES),
  );
  fc.assert(
    fc.property(fc.option(host, { nil: undefined }), (h) => {
      const s = safeHost(h);
      if (s === undefined) return true;
      if (s !== h || s.length > 255 || /[\s\r\n/\\?#@]/.test(s)) return false;
      // It goes into a Location header and a .vv file's proxy=: it must parse back as that host.
      let u: URL;
      try {
        u = new URL(`https://${s}/`);
      } catch {
        throw new Error(`safeHost accepted ${JSON.stringify(s)}, which is no URL authority`);
      }
      return u.username === '' && u.password === '' && u.pathname === '/' && u.search === '' && u.hash === '';
    }),
    fuzz(3000),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------
// gateway/http/websocket.ts: Origin

t.test('originAllowed: any Origin and Host give a boolean; only our own, the configured, or the same https host pass', async (t) => {
  const own = ['https://localhost:8443', 'https://127.0.0.1:8443'];
  const allowed = ['https://portal.example.test', 'http://intranet.example.test:8080'];
  const ctx = { config: { http: { allowedOrigins: allowed } }, ownOrigins: () => own } as unknown as GatewayContext;
  const origin = fc.oneof(
    anyText(120),
    fc.constantFrom(...own, ...allowed, 'null', 'https://localhost:8443/', 'https://LOCALHOST:8443', 'https://localhost:08443', 'HTTPS://portal.example.test:443', 'https://portal.example.test.evil.test', 'https://evil.test', 'https://localhost:8443@evil.test'),
    fc.webUrl(),
    fc.tuple(fc.constantFrom('https://', 'http://', 'wss://', 'file://', 'null', ''), hostLike, fc.option(portLike, { nil: undefined })).map(([s, h, p]) => `${s}${h}${p === undefined ? '' : `:${p}`}`),
    fc.constantFrom(...HOSTILE_HEADER_VALUES),
  );
  const hostHeader = fc.option(fc.oneof(fc.constantFrom('localhost:8443', 'evil.test', 'LOCALHOST:8443'), hostLike, anyText(40)), { nil: undefined });
  fc.assert(
    fc.property(fc.option(origin, { nil: undefined }), hostHeader, (o, h) => {
      const req = { headers: { ...(o === undefined ? {} : { origin: o }), ...(h === undefined ? {} : { host: h }) } } as IncomingMessage;
      const ok = originAllowed(ctx, req);
      if (typeof ok !== 'boolean') return false;
      if (!ok || o === undefined) return true;
      const u = new URL(o);
      return (u.protocol === 'https:' && u.host === h?.toLowerCase()) || [...own, ...allowed].map((x) => new URL(x).origin).includes(u.origin);
    }),
    fuzz(2000),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------
// certs/ca.ts: the server name of a ClientHello picks the certificate (gateway/server.ts)

t.test('certificateMatchesName: any SNI server name gives a boolean; only the names the certificate holds match', async (t) => {
  const names = ['localhost', '*.desk.example.test', '127.0.0.1', '::1'];
  const { server } = testPki(names);
  const serverName = fc.oneof(
    anyText(80),
    hostLike,
    fc.constantFrom('localhost', 'LOCALHOST.', 'a.desk.example.test', 'desk.example.test', 'a.b.desk.example.test', '*.desk.example.test', '[::1]', '::1', '0:0::1', '127.0.0.1', '127.1', '::ffff:127.0.0.1', '[::1%25lo]', '[', '[]'),
  );
  fc.assert(
    fc.property(serverName, (name) => {
      const m = certificateMatchesName(server.cert, name);
      if (typeof m !== 'boolean') return false;
      if (!m) return true;
      const n = name.replace(/^\[(.*)\]$/, '$1').toLowerCase().replace(/\.$/, '');
      return n === 'localhost' || /^[^.*]+\.desk\.example\.test$/.test(n) || isIP(n) !== 0;
    }),
    fuzz(1500),
  );
  t.pass();
});

// ---------------------------------------------------------------------------------------------
// cluster/join.ts and certs/ca.ts: what `POST /api/cluster/join` reads before the token is checked

t.test('join tokens and node requests: junk is undefined or a NodeRequestError, never another throw', async (t) => {
  const real = mintJoinToken(testPki().ca.cert).token;
  const tokenLike = fc.oneof(
    anyText(200),
    syntaxSoup('opj1.-_=abcXYZ09 \n', 120),
    fc.tuple(fc.nat(), fc.constantFrom('A', '-', '_', '.', '=', ' ', '\u00e9')).map(([i, c]) => {
      const j = i % (real.length + 1);
      return `${real.slice(0, j)}${c}${real.slice(j + 1)}`;
    }),
  );
  fc.assert(
    fc.property(tokenLike, (text) => {
      const parsed = parseJoinToken(text);
      return parsed === undefined || (parsed.secret.length === 32 && formatJoinToken(parsed) === text.trim());
    }),
    fuzz(2000),
  );
  const { csr } = createNodeRequest('n1');
  const der = Buffer.from(csr.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const pem = (b: Uint8Array): string => `-----BEGIN CERTIFICATE REQUEST-----\n${Buffer.from(b).toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  const requestLike = fc.oneof(
    anyText(300),
    fc.uint8Array({ maxLength: 2000 }).map(pem),
    // The real request with bytes changed, cut short, or grown.
    fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
      const b = Buffer.from(der);
      const j = i % b.length;
      b[j] = (b[j] ?? 0) ^ x;
      return pem(b);
    }),
    fc.nat().map((n) => pem(der.subarray(0, n % der.length))),
    fc.uint8Array({ maxLength: 64 }).map((extra) => pem(Buffer.concat([der, extra]))),
  );
  fc.assert(
    fc.property(requestLike, (text) => {
      try {
        return readNodeRequest(text, 'n1').nodeId === 'n1';
      } catch (e) {
        return e instanceof NodeRequestError;
      }
    }),
    fuzz(300),
  );
  t.equal(readNodeRequest(csr, 'n1').nodeId, 'n1', 'the real request still passes');
});
