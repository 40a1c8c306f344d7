/**
 * RDCleanPath DER codec: IronRDP's own serialization vectors (crates/ironrdp-testsuite-core/tests/
 * rdcleanpath.rs), a request built by hand from the Rust definition's field tags, named bad
 * inputs, and property tests (fixed seeds): junk never throws, PDUs round-trip, framing agrees
 * with decoding however the bytes are split.
 */
import t from 'tap';
import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import {
  RDCLEANPATH_LIMITS,
  RDCLEANPATH_REQUEST_LIMITS,
  RDCLEANPATH_VERSION,
  type RdcleanpathPdu,
  decodeRdcleanpath,
  encodeRdcleanpath,
  rdcleanpathDetector,
  rdcleanpathFrame,
  rdcleanpathMessage,
  rdcleanpathPdu,
} from '../../protocols/rdcleanpath.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const DEADBEEF = hex('deadbeff');

// IronRDP's expected DER for its test messages (same bytes, written in hex).
const IRONRDP = {
  request: hex('3032 a004 0202 0d3e a20d 0c0b 64657374696e6174696f6e a30c 0c0a 70726f78792061757468 a505 0c03 504342 a606 0404 deadbeff'),
  vmconnectRequest: hex('302a a004 0202 0d3e a20d 0c0b 64657374696e6174696f6e a30c 0c0a 70726f78792061757468 a505 0c03 504342'),
  response: hex('3034 a004 0202 0d3e a606 0404 deadbeff a714 3012 0404 deadbeff 0404 deadbeff 0404 deadbeff a90e 0c0c 3139322e3136382e372e3935'),
  vmconnectResponse: hex('302c a004 0202 0d3e a714 3012 0404 deadbeff 0404 deadbeff 0404 deadbeff a90e 0c0c 3139322e3136382e372e3935'),
  httpError: hex('3015 a004 0202 0d3e a10d 300b a003 0201 01 a104 0202 01f4'),
  tlsError: hex('3014 a004 0202 0d3e a10c 300a a003 0201 01 a303 0201 30'),
};

const EXPECTED: Record<keyof typeof IRONRDP, { pdu: RdcleanpathPdu; type: string }> = {
  request: {
    pdu: { version: 3390, destination: 'destination', proxyAuth: 'proxy auth', preconnectionBlob: 'PCB', x224ConnectionPdu: DEADBEEF },
    type: 'request',
  },
  vmconnectRequest: { pdu: { version: 3390, destination: 'destination', proxyAuth: 'proxy auth', preconnectionBlob: 'PCB' }, type: 'vmconnect-request' },
  response: {
    pdu: { version: 3390, x224ConnectionPdu: DEADBEEF, serverCertChain: [DEADBEEF, DEADBEEF, DEADBEEF], serverAddr: '192.168.7.95' },
    type: 'response',
  },
  vmconnectResponse: { pdu: { version: 3390, serverCertChain: [DEADBEEF, DEADBEEF, DEADBEEF], serverAddr: '192.168.7.95' }, type: 'vmconnect-response' },
  httpError: { pdu: { version: 3390, error: { errorCode: 1, httpStatusCode: 500 } }, type: 'general-error' },
  tlsError: { pdu: { version: 3390, error: { errorCode: 1, tlsAlertCode: 48 } }, type: 'general-error' },
};

/** DER TLV by hand, independent of the codec under test. */
function tlv(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, body]);
}
const seq = (...parts: Buffer[]): Buffer => tlv(0x30, Buffer.concat(parts));
const ctx = (n: number, inner: Buffer): Buffer => tlv(0xa0 + n, inner);
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'));
const octets = (b: Buffer): Buffer => tlv(0x04, b);
const int = (b: string): Buffer => tlv(0x02, hex(b));
const VERSION = ctx(0, int('0d3e'));

// What IronRDP's web client sends: a TPKT + X.224 Connection Request with a routing cookie and an
// RDP Negotiation Request for TLS | CredSSP (MS-RDPBCGR 2.2.1.1), destination and a ticket.
const X224_CR = Buffer.concat([
  hex('0300 002b'), // TPKT version 3, length 43
  hex('26 e0 0000 0000 00'), // X.224 CR, length indicator 38
  Buffer.from('Cookie: mstshash=alice\r\n', 'latin1'),
  hex('01 00 0800 03000000'), // RDP_NEG_REQ: PROTOCOL_SSL | PROTOCOL_HYBRID
]);
const TICKET = 'k7d2q4m1x9w3v5b8.win11';
const BROWSER_REQUEST = seq(VERSION, ctx(2, utf8('win11.example.invalid:3389')), ctx(3, utf8(TICKET)), ctx(6, octets(X224_CR)));

t.test('IronRDP test vectors decode, classify, and re-encode to the same bytes', async (t) => {
  for (const [name, der] of Object.entries(IRONRDP) as Array<[keyof typeof IRONRDP, Buffer]>) {
    const d = decodeRdcleanpath(der);
    t.same(d, { kind: 'done', value: EXPECTED[name].pdu, length: der.length }, `${name}: decodes`);
    if (d.kind !== 'done') continue;
    const e = encodeRdcleanpath(d.value);
    t.ok(e.ok && e.value.equals(der), `${name}: re-encodes byte for byte`);
    const m = rdcleanpathMessage(d.value);
    t.equal(m.ok && m.value.type, EXPECTED[name].type, `${name}: is a ${EXPECTED[name].type}`);
    if (m.ok) t.same(rdcleanpathPdu(m.value), d.value, `${name}: message -> PDU is the inverse`);
    t.same(rdcleanpathFrame(der), { kind: 'done', value: der.length, length: der.length }, `${name}: framed`);
    t.same(rdcleanpathDetector.detect(der), { kind: 'match', info: { length: der.length } }, `${name}: detected`);
  }
});

t.test("IronRDP's not-enough-bytes cases are 'more' for framing and detection", async (t) => {
  for (const s of ['', '30', '3015', '3015a0', '3032a004', '3032a00402', '3032a0040202', '3032a00402020d']) {
    t.equal(rdcleanpathFrame(hex(s)).kind, 'more', `frame ${s || '(empty)'}`);
    t.equal(rdcleanpathDetector.detect(hex(s)).kind, 'more', `detect ${s || '(empty)'}`);
  }
  t.same(rdcleanpathFrame(hex('3032a0040202')), { kind: 'more', need: 0x34 }, 'need is the total once the header is in');
});

t.test("a browser's request, built from the field tags, is a request carrying the ticket", async (t) => {
  t.equal(X224_CR.length, X224_CR.readUInt16BE(2), 'the fixture is a consistent TPKT');
  const d = decodeRdcleanpath(BROWSER_REQUEST);
  if (d.kind !== 'done') return t.fail(JSON.stringify(d));
  const m = rdcleanpathMessage(d.value);
  t.same(m, {
    ok: true,
    value: { type: 'request', destination: 'win11.example.invalid:3389', proxyAuth: TICKET, x224ConnectionRequest: X224_CR },
  });
});

t.test('responses the gateway will send encode as IronRDP expects', async (t) => {
  const cc = hex('0300 0013 0e d0 0000 1234 00 02 00 0800 02000000'); // X.224 CC, RDP_NEG_RSP HYBRID
  const cert = Buffer.alloc(1500, 0x5a);
  const e = encodeRdcleanpath(rdcleanpathPdu({ type: 'response', x224ConnectionResponse: cc, serverCertChain: [cert], serverAddr: '10.0.0.7:3389' }));
  const expected = seq(VERSION, ctx(6, octets(cc)), ctx(7, seq(octets(cert))), ctx(9, utf8('10.0.0.7:3389')));
  t.ok(e.ok && e.value.equals(expected), 'response with a 1500-byte certificate (long-form lengths)');
  const err = encodeRdcleanpath(rdcleanpathPdu({ type: 'general-error', error: { errorCode: 1, httpStatusCode: 200, wsaLastError: 10061, tlsAlertCode: 255 } }));
  const errExpected = seq(VERSION, ctx(1, seq(ctx(0, int('01')), ctx(1, int('00c8')), ctx(2, int('274d')), ctx(3, int('00ff')))));
  t.ok(err.ok && err.value.equals(errExpected), 'error with every field; 200 and 255 get a leading zero (DER INTEGER is signed)');
  const nego = encodeRdcleanpath(rdcleanpathPdu({ type: 'negotiation-error', x224ConnectionResponse: cc }));
  t.ok(nego.ok && nego.value.equals(seq(VERSION, ctx(1, seq(ctx(0, int('02')))), ctx(6, octets(cc)))), 'negotiation error keeps the server X.224 answer');
});

interface Case {
  readonly name: string;
  readonly bytes: Buffer;
  readonly kind: 'done' | 'more' | 'error';
  readonly code?: string;
}

const big = (n: number): string => 'x'.repeat(n);
const cases: Case[] = [
  // too short
  { name: 'empty', bytes: Buffer.alloc(0), kind: 'more' },
  { name: 'header only', bytes: hex('3034'), kind: 'more' },
  { name: 'long-form header cut in its length', bytes: hex('3082 01'), kind: 'more' },
  { name: 'request cut one byte short', bytes: BROWSER_REQUEST.subarray(0, -1), kind: 'more' },
  // invalid
  { name: 'a TLS ClientHello', bytes: hex('1603 0100 2001'), kind: 'error', code: 'malformed' },
  { name: 'an HTTP request', bytes: Buffer.from('GET / HTTP/1.1\r\n'), kind: 'error', code: 'malformed' },
  { name: 'indefinite length (BER)', bytes: hex('3080 a004 0202 0d3e 0000'), kind: 'error', code: 'malformed' },
  { name: 'non-minimal outer length', bytes: hex('3081 06 a004 0202 0d3e'), kind: 'error', code: 'malformed' },
  { name: 'length of five bytes', bytes: hex('3085 0000000006'), kind: 'error', code: 'too-large' },
  { name: 'PDU over the 64 KiB cap, refused from its header', bytes: hex('3083 010001'), kind: 'error', code: 'too-large' },
  { name: 'version 3389', bytes: seq(ctx(0, int('0d3d'))), kind: 'error', code: 'unsupported-version' },
  { name: 'version 1', bytes: seq(ctx(0, int('01'))), kind: 'error', code: 'unsupported-version' },
  { name: 'no version field', bytes: seq(ctx(2, utf8('h'))), kind: 'error', code: 'malformed' },
  { name: 'empty SEQUENCE', bytes: hex('3000'), kind: 'error', code: 'malformed' },
  { name: 'version field cut by the SEQUENCE length', bytes: hex('3004 a004 0202'), kind: 'error', code: 'malformed' },
  { name: 'unknown field [8]', bytes: seq(VERSION, ctx(8, utf8('ocsp'))), kind: 'error', code: 'malformed' },
  { name: 'fields out of order', bytes: seq(VERSION, ctx(3, utf8('t')), ctx(2, utf8('d'))), kind: 'error', code: 'malformed' },
  { name: 'field repeated', bytes: seq(VERSION, ctx(2, utf8('a')), ctx(2, utf8('b'))), kind: 'error', code: 'malformed' },
  { name: 'implicit instead of explicit tag', bytes: seq(VERSION, tlv(0x82, Buffer.from('host'))), kind: 'error', code: 'malformed' },
  { name: 'destination as OCTET STRING', bytes: seq(VERSION, ctx(2, octets(Buffer.from('host')))), kind: 'error', code: 'malformed' },
  { name: 'destination not UTF-8', bytes: seq(VERSION, ctx(2, tlv(0x0c, hex('c328')))), kind: 'error', code: 'malformed' },
  { name: 'two elements in one explicit field', bytes: seq(VERSION, ctx(2, Buffer.concat([utf8('a'), utf8('b')]))), kind: 'error', code: 'malformed' },
  { name: 'non-minimal integer', bytes: seq(VERSION, ctx(1, seq(ctx(0, int('0001'))))), kind: 'error', code: 'malformed' },
  { name: 'negative error code', bytes: seq(VERSION, ctx(1, seq(ctx(0, int('ff'))))), kind: 'error', code: 'invalid-field' },
  { name: 'error code over u16', bytes: seq(VERSION, ctx(1, seq(ctx(0, int('010000'))))), kind: 'error', code: 'invalid-field' },
  { name: 'TLS alert over u8', bytes: seq(VERSION, ctx(1, seq(ctx(0, int('01')), ctx(3, int('0100'))))), kind: 'error', code: 'invalid-field' },
  { name: 'error without error_code', bytes: seq(VERSION, ctx(1, seq(ctx(1, int('01f4'))))), kind: 'error', code: 'missing-field' },
  { name: 'proxy_auth over the 4 KiB cap', bytes: seq(VERSION, ctx(3, utf8(big(4097)))), kind: 'error', code: 'too-large' },
  { name: 'certificate chain of 17', bytes: seq(VERSION, ctx(7, seq(...Array.from({ length: 17 }, () => octets(DEADBEEF))))), kind: 'error', code: 'too-large' },
  { name: 'nesting deeper than the schema', bytes: seq(VERSION, ctx(1, seq(ctx(0, seq(ctx(0, int('01'))))))), kind: 'error', code: 'malformed' },
  // semi-valid: well-formed DER, but not a message (decoding succeeds; classification refuses)
  { name: 'request without proxy_auth', bytes: seq(VERSION, ctx(2, utf8('d')), ctx(6, octets(X224_CR))), kind: 'done' },
  { name: 'version only', bytes: seq(VERSION), kind: 'done' },
  // valid, with one extra byte after it (the next message's, left to the caller)
  { name: 'request', bytes: BROWSER_REQUEST, kind: 'done' },
  { name: 'request + extra byte', bytes: Buffer.concat([BROWSER_REQUEST, hex('00')]), kind: 'done' },
  { name: 'proxy_auth exactly at the cap', bytes: seq(VERSION, ctx(3, utf8(big(4096)))), kind: 'done' },
];

t.test('named fixtures', async (t) => {
  for (const c of cases) {
    const d = decodeRdcleanpath(c.bytes);
    t.equal(d.kind, c.kind, `${c.name}: ${d.kind === 'error' ? d.reason : d.kind}`);
    if (c.code !== undefined && d.kind === 'error') t.equal(d.code, c.code, `${c.name}: code`);
  }
  const extra = decodeRdcleanpath(Buffer.concat([BROWSER_REQUEST, hex('00')]));
  t.equal(extra.kind === 'done' && extra.length, BROWSER_REQUEST.length, 'the extra byte is not consumed');
  const semi = decodeRdcleanpath(seq(VERSION, ctx(2, utf8('d')), ctx(6, octets(X224_CR))));
  t.same(semi.kind === 'done' && rdcleanpathMessage(semi.value), { ok: false, code: 'missing-field', reason: 'a request without proxy_auth' });
  const bare = decodeRdcleanpath(seq(VERSION, ctx(2, utf8('d')), ctx(3, utf8('t'))));
  t.equal(bare.kind === 'done' && !rdcleanpathMessage(bare.value).ok, true, 'a request without X.224 or blob is not a message');
  const blank = decodeRdcleanpath(seq(VERSION, ctx(2, utf8('d')), ctx(3, utf8('t')), ctx(5, utf8('  '))));
  t.equal(blank.kind === 'done' && !rdcleanpathMessage(blank.value).ok, true, 'a blank VMConnect blob is not a message');
});

t.test('request limits: what a gateway reads from anonymous browsers', async (t) => {
  t.match(decodeRdcleanpath(BROWSER_REQUEST, RDCLEANPATH_REQUEST_LIMITS), { kind: 'done' }, 'a request fits');
  t.match(decodeRdcleanpath(IRONRDP.response, RDCLEANPATH_REQUEST_LIMITS), { kind: 'error', code: 'too-large' }, 'a certificate chain does not');
  t.match(rdcleanpathFrame(hex('3082 4001'), RDCLEANPATH_REQUEST_LIMITS), { kind: 'error', code: 'too-large' }, 'over 16 KiB, refused from the header');
  const elements = Buffer.alloc(16 * 1024 - 10);
  for (let i = 0; i < elements.length; i += 2) elements[i] = 0x04;
  const flood = Buffer.concat([hex('3082'), Buffer.from([(elements.length + 6) >> 8, (elements.length + 6) & 0xff]), VERSION, elements]);
  const started = process.hrtime.bigint();
  t.match(decodeRdcleanpath(flood, RDCLEANPATH_REQUEST_LIMITS), { kind: 'error', code: 'malformed' }, '8000 empty elements are refused');
  t.comment(`in ${Number(process.hrtime.bigint() - started) / 1e6} ms`);
});

t.test('encoding refuses what decoding would refuse', async (t) => {
  const v = RDCLEANPATH_VERSION;
  t.match(encodeRdcleanpath({ version: v, proxyAuth: big(4097) }), { ok: false, code: 'too-large' });
  t.match(encodeRdcleanpath({ version: v, error: { errorCode: 70000 } }), { ok: false, code: 'invalid-field' });
  t.match(encodeRdcleanpath({ version: v, error: { errorCode: 1, tlsAlertCode: -1 } }), { ok: false, code: 'invalid-field' });
  t.match(encodeRdcleanpath({ version: 1.5 }), { ok: false, code: 'invalid-field' });
  t.match(encodeRdcleanpath({ version: v, serverCertChain: Array.from({ length: 17 }, () => DEADBEEF) }), { ok: false, code: 'too-large' });
  const chain = Array.from({ length: 5 }, () => Buffer.alloc(RDCLEANPATH_LIMITS.certBytes));
  t.match(encodeRdcleanpath({ version: v, serverCertChain: chain }), { ok: false, code: 'too-large' }, 'five 16 KiB certificates exceed the 64 KiB PDU');
});

// ---- properties ------------------------------------------------------------------------------

const SEED = 0x0e9021;
const optional = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(arb, { nil: undefined });
const bytes = (max: number): fc.Arbitrary<Buffer> => fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b));
const arbPdu: fc.Arbitrary<RdcleanpathPdu> = fc
  .record({
    error: optional(
      fc.record({
        errorCode: fc.integer({ min: 0, max: 0xffff }),
        httpStatusCode: optional(fc.integer({ min: 0, max: 0xffff })),
        wsaLastError: optional(fc.integer({ min: 0, max: 0xffff })),
        tlsAlertCode: optional(fc.integer({ min: 0, max: 0xff })),
      }),
    ),
    destination: optional(fc.string({ unit: 'grapheme', maxLength: 40 })),
    proxyAuth: optional(fc.string({ maxLength: 200 })),
    serverAuth: optional(fc.string({ maxLength: 20 })),
    preconnectionBlob: optional(fc.string({ unit: 'grapheme', maxLength: 300 })),
    x224ConnectionPdu: optional(bytes(300)),
    serverCertChain: optional(fc.array(bytes(400), { maxLength: 4 })),
    serverAddr: optional(fc.string({ maxLength: 40 })),
  })
  .map((r) => {
    // Drop absent fields, so decode's output (which has no undefined keys) compares equal.
    const out: Record<string, unknown> = { version: RDCLEANPATH_VERSION };
    for (const [k, v] of Object.entries(r)) {
      if (v === undefined) continue;
      out[k] = k === 'error' ? Object.fromEntries(Object.entries(v as object).filter(([, x]) => x !== undefined)) : v;
    }
    return out as unknown as RdcleanpathPdu;
  });

t.test('property: any PDU round-trips, and framing finds it however it is cut', async (t) => {
  fc.assert(
    fc.property(arbPdu, fc.nat(), (pdu, cut) => {
      const e = encodeRdcleanpath(pdu);
      if (!e.ok) return false;
      const d = decodeRdcleanpath(e.value);
      if (d.kind !== 'done' || d.length !== e.value.length || !isDeepStrictEqual(d.value, pdu)) return false;
      const at = cut % e.value.length;
      return rdcleanpathFrame(e.value.subarray(0, at)).kind === 'more' && rdcleanpathDetector.detect(e.value.subarray(0, at)).kind !== 'no';
    }),
    { seed: SEED, numRuns: 400 },
  );
});

t.test('property: junk and mutated PDUs never throw, and frame and decode agree', async (t) => {
  const valid = Object.values(IRONRDP).concat([BROWSER_REQUEST]);
  const junk = fc.oneof(
    bytes(300),
    fc.tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 })).map(([v, edits]) => {
      const b = Buffer.from(v);
      for (const [at, value] of edits) b[at % b.length] = value;
      return b;
    }),
    fc.tuple(bytes(4), fc.constantFrom(...valid)).map(([junkPrefix, v]) => Buffer.concat([hex('30'), junkPrefix, v])),
  );
  fc.assert(
    fc.property(junk, (b) => {
      const d = decodeRdcleanpath(b);
      const f = rdcleanpathFrame(b);
      rdcleanpathDetector.detect(b);
      if (d.kind === 'done') return f.kind === 'done' && f.length === d.length && encodeRdcleanpath(d.value).ok;
      if (d.kind === 'more') return f.kind === 'more';
      return true;
    }),
    { seed: SEED, numRuns: 5000 },
  );
  t.pass('5000 inputs, no exception');
});
