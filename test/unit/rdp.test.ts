/**
 * Native RDP parsing and rewriting (protocols/rdp.ts): table tests over captured FreeRDP bytes and
 * named malformed cases, then property tests with a fixed seed (round trips, prefixes, junk).
 */
import t from 'tap';
import fc from 'fast-check';
import {
  type ConnectionConfirm, type ConnectionRequest, NegFailureCode, NegRequestFlag, RdpProtocol, X224_MAX_LENGTH,
  buildNegotiationFailure, encodeConnectionConfirm, encodeConnectionRequest, encodePreconnectionPdu,
  parseConnectionConfirm, parseConnectionRequest, parsePreconnectionPdu, parseRdpOpening, rdpDetector,
  rdpPreconnectionDetector, stripRoutingToken,
} from '../../protocols/rdp.js';
import { probeGreeting } from '../../protocols/probe.js';
import * as R from '../fixtures/rdp-packets.js';

const SEED = 20240611;
const hex = R.hex;

t.test('Connection Requests FreeRDP 2.11 sent', async (t) => {
  const table: Array<[string, Buffer, Partial<ConnectionRequest>]> = [
    ['default', R.FREERDP_CR, { token: { kind: 'mstshash', value: 'demo' }, negotiation: { flags: 0, requestedProtocols: 3, correlationId: null } }],
    ['/sec:tls', R.FREERDP_CR_TLS, { negotiation: { flags: 0, requestedProtocols: RdpProtocol.SSL, correlationId: null } }],
    ['/sec:rdp', R.FREERDP_CR_RDP_SECURITY, { token: { kind: 'mstshash', value: 'demo' }, negotiation: null }],
    ['/load-balance-info', R.FREERDP_CR_LOAD_BALANCE_INFO, { token: { kind: 'raw', value: 'tk1abc.win10' } }],
    ['Cookie: msts=', R.FREERDP_CR_MSTS, { token: { kind: 'msts', value: 'tk1abc.win10' } }],
    ['through a gateway', R.FREERDP_TSGU_DATA_CR.subarray(10), { token: { kind: 'mstshash', value: '\\demo' } }],
  ];
  for (const [name, bytes, expect] of table) {
    const r = parseConnectionRequest(bytes);
    if (r.kind !== 'done') {
      t.fail(`${name}: ${JSON.stringify(r)}`);
      continue;
    }
    t.equal(r.length, bytes.length, `${name}: takes the whole TPKT`);
    t.match(r.value, { dstRef: 0, srcRef: 0, classOption: 0, ...expect }, name);
    t.same(encodeConnectionRequest(r.value), bytes, `${name}: re-encodes byte for byte`);
    t.same(rdpDetector.detect(bytes), { kind: 'match', info: { length: bytes.length } }, `${name}: detector agrees`);
  }
});

t.test('stripping the routing token keeps the rest and fixes TPKT length and LI', async (t) => {
  const bare = probeGreeting('rdp'); // 03 00 00 13 0e e0 ... RDP_NEG_REQ for SSL | HYBRID
  for (const bytes of [R.FREERDP_CR_LOAD_BALANCE_INFO, R.FREERDP_CR_MSTS, R.FREERDP_CR]) {
    const r = parseConnectionRequest(bytes);
    t.equal(r.kind, 'done');
    if (r.kind === 'done') t.same(stripRoutingToken(r.value), bare);
  }
  const legacy = parseConnectionRequest(R.FREERDP_CR_RDP_SECURITY);
  if (legacy.kind === 'done') t.same(stripRoutingToken(legacy.value), hex('03 00 00 0b 06 e0 00 00 00 00 00'), 'no negotiation request either');
  const withCorrelation: ConnectionRequest = {
    dstRef: 0, srcRef: 0, classOption: 0,
    token: { kind: 'msts', value: 'tk.vm' },
    negotiation: { flags: NegRequestFlag.CORRELATION_INFO_PRESENT, requestedProtocols: 3, correlationId: new Uint8Array(16).fill(7) },
  };
  const stripped = parseConnectionRequest(stripRoutingToken(withCorrelation));
  t.match(stripped, { kind: 'done', length: 11 + 8 + 36, value: { token: null, negotiation: withCorrelation.negotiation } }, 'correlation info survives');
});

t.test('malformed Connection Requests: a code, never a throw', async (t) => {
  const cases: Array<[string, Buffer, string]> = [
    ['empty', Buffer.alloc(0), 'more'],
    ['TPKT header only', hex('03 00 00 2a'), 'more'],
    ['all but the last byte', R.FREERDP_CR.subarray(0, -1), 'more'],
    ['TPKT version 2', hex('02 00 00 13 0e e0'), 'not-tpkt'],
    ['reserved byte set', hex('03 01 00 13 0e e0'), 'not-tpkt'],
    ['length below the fixed part', hex('03 00 00 0a 05 e0'), 'bad-length'],
    ['length beyond one LI byte', hex('03 00 01 04 ff e0'), 'bad-length'],
    ['a 64 KiB claim', hex('03 00 ff ff'), 'bad-length'],
    ['LI disagrees with TPKT', hex('03 00 00 13 0f e0'), 'bad-length-indicator'],
    ['a Connection Confirm', R.SHADOW_CC_SSL, 'not-connection-request'],
    ['a data TPDU', hex('03 00 00 0c 07 f0 80 00 00 00 00 00'), 'not-connection-request'],
    ['cookie without CR LF', hex('03 00 00 1a 15 e0 00 00 00 00 00 436f6f6b69653a206d7374733d6162630d'), 'unterminated-token'],
    ['negotiation request cut short', hex('03 00 00 12 0d e0 00 00 00 00 00 01 00 08 00 03 00 00'), 'bad-negotiation'],
    ['negotiation length 7', hex('03 00 00 13 0e e0 00 00 00 00 00 01 00 07 00 03 00 00 00'), 'bad-negotiation'],
    ['correlation flag, no info', hex('03 00 00 13 0e e0 00 00 00 00 00 01 08 08 00 03 00 00 00'), 'bad-correlation-info'],
    ['bytes after the negotiation request', hex('03 00 00 14 0f e0 00 00 00 00 00 01 00 08 00 03 00 00 00 ff'), 'trailing-bytes'],
  ];
  for (const [name, bytes, code] of cases) {
    const r = parseConnectionRequest(bytes);
    t.equal(r.kind === 'error' ? r.code : r.kind, code, name);
  }
  const extra = parseConnectionRequest(Buffer.concat([R.FREERDP_CR, hex('16')]));
  t.match(extra, { kind: 'done', length: R.FREERDP_CR.length }, 'an extra byte after the TPKT is not taken');
  t.throws(() => encodeConnectionRequest({ dstRef: 0, srcRef: 0, classOption: 0, token: { kind: 'raw', value: 'a\r\nb' }, negotiation: null }), RangeError);
  t.throws(() => encodeConnectionRequest({ dstRef: 0, srcRef: 0, classOption: 0, token: { kind: 'raw', value: 'x'.repeat(300) }, negotiation: null }), RangeError);
});

t.test('Connection Confirms a console sent, and the failure we build', async (t) => {
  t.match(parseConnectionConfirm(R.SHADOW_CC_SSL), { kind: 'done', length: 19, value: { negotiation: { type: 'response', flags: 3, selectedProtocol: RdpProtocol.SSL } } });
  t.match(parseConnectionConfirm(R.SHADOW_CC_RDP), { kind: 'done', value: { negotiation: { type: 'response', selectedProtocol: RdpProtocol.RDP } } });
  t.match(parseConnectionConfirm(R.SHADOW_CC_HYBRID_REQUIRED), { kind: 'done', value: { negotiation: { type: 'failure', failureCode: NegFailureCode.HYBRID_REQUIRED_BY_SERVER } } });
  t.same(buildNegotiationFailure(NegFailureCode.HYBRID_REQUIRED_BY_SERVER), R.SHADOW_CC_HYBRID_REQUIRED, 'byte for byte what a real server sends');
  t.match(parseConnectionConfirm(hex('03 00 00 0b 06 d0 00 00 12 34 00')), { kind: 'done', value: { srcRef: 0x1234, negotiation: null } });
  const cases: Array<[string, Buffer, string]> = [
    ['half a header', hex('03 00 00'), 'more'],
    ['a Connection Request', R.FREERDP_CR, 'not-connection-confirm'],
    ['negotiation request in a confirm', hex('03 00 00 13 0e d0 00 00 00 00 00 01 00 08 00 03 00 00 00'), 'bad-negotiation'],
    ['trailing byte inside the TPKT', hex('03 00 00 14 0f d0 00 00 00 00 00 02 00 08 00 01 00 00 00 00'), 'trailing-bytes'],
    ['TLS record', hex('16 03 01 00 10'), 'not-tpkt'],
  ];
  for (const [name, bytes, code] of cases) {
    const r = parseConnectionConfirm(bytes);
    t.equal(r.kind === 'error' ? r.code : r.kind, code, name);
  }
});

t.test('preconnection PDUs FreeRDP 2.11 sent', async (t) => {
  t.same(parsePreconnectionPdu(R.FREERDP_PCB_BLOB), { kind: 'done', length: 46, value: { version: 2, flags: 0, id: 0, blob: 'tk1abc.win10' } }, '/pcb: (two NULs)');
  t.match(parsePreconnectionPdu(R.FREERDP_PCB_BLOB_ID7), { kind: 'done', value: { id: 7, blob: 'tk1abc.win10' } }, '/pcb: /pcid:7');
  t.same(parsePreconnectionPdu(R.FREERDP_PCB_ID_ONLY), { kind: 'done', length: 18, value: { version: 2, flags: 0, id: 42, blob: '' } }, '/pcid: alone');
  t.same(rdpPreconnectionDetector.detect(R.FREERDP_PCB_BLOB), { kind: 'match', info: { length: 46, version: 2 } });
  t.same(encodePreconnectionPdu({ id: 42, blob: '' }), R.FREERDP_PCB_ID_ONLY, 'empty blob: cchPCB 0, as FreeRDP');
  const v1 = encodePreconnectionPdu({ id: 9, blob: null });
  t.same(v1, hex('10000000 00000000 01000000 09000000'));
  t.same(parsePreconnectionPdu(v1), { kind: 'done', length: 16, value: { version: 1, flags: 0, id: 9, blob: null } });
  const ours = encodePreconnectionPdu({ id: 0, blob: 'tk1abc.win10' });
  t.equal(ours.length, 44, 'we terminate with one NUL');
  t.match(parsePreconnectionPdu(ours), { kind: 'done', value: { blob: 'tk1abc.win10' } });

  const cases: Array<[string, Buffer, string]> = [
    ['three bytes', hex('2e 00 00'), 'more'],
    ['fixed part only', R.FREERDP_PCB_BLOB.subarray(0, 18), 'more'],
    ['cbSize 17', hex('11000000 00000000 02000000 00000000'), 'bad-length'],
    ['cbSize 12', hex('0c000000 00000000 01000000'), 'bad-length'],
    ['cbSize beyond the blob cap', hex('00100000'), 'too-long'],
    ['high cbSize byte, early', hex('2e 00 01'), 'too-long'],
    ['Flags set', hex('10000000 01000000 01000000 00000000'), 'bad-flags'],
    ['v1 size, v2 version', hex('10000000 00000000 02000000 00000000'), 'bad-version'],
    ['v2 size, v1 version', hex('12000000 00000000 01000000 00000000 0000'), 'bad-version'],
    ['cchPCB disagrees with cbSize', hex('14000000 00000000 02000000 00000000 0200 4100'), 'bad-length'],
  ];
  for (const [name, bytes, code] of cases) {
    const r = parsePreconnectionPdu(bytes);
    t.equal(r.kind === 'error' ? r.code : r.kind, code, name);
  }
  t.match(parsePreconnectionPdu(R.FREERDP_PCB_BLOB, 8), { kind: 'error', code: 'too-long' }, 'a smaller configured cap');
});

t.test('the whole opening: optional preconnection PDU, then the request', async (t) => {
  t.match(parseRdpOpening(R.FREERDP_PCB_THEN_CR), {
    kind: 'done',
    length: R.FREERDP_PCB_THEN_CR.length,
    value: { preconnection: { id: 0, blob: 'tk1abc.win10' }, request: { token: { kind: 'mstshash', value: 'demo' } } },
  });
  t.match(parseRdpOpening(R.FREERDP_PCB_THEN_MSTS_CR), { kind: 'done', value: { request: { token: { kind: 'msts', value: 'tk1abc.win10' } } } });
  t.match(parseRdpOpening(R.FREERDP_CR_LOAD_BALANCE_INFO), { kind: 'done', value: { preconnection: null } });
  t.same(parseRdpOpening(R.FREERDP_PCB_BLOB), { kind: 'more' }, 'PDU without its request yet');
  t.match(parseRdpOpening(hex('11000000')), { kind: 'error', code: 'preconnection-bad-length' });
  t.match(parseRdpOpening(Buffer.concat([R.FREERDP_PCB_BLOB, R.SHADOW_CC_SSL])), { kind: 'error', code: 'not-connection-request' });
});

t.test('FreeRDP\'s retries after a negotiation failure: the routing token stays, the PDU does not', async (t) => {
  const opened = R.FREERDP_MSTS_RETRIES.map((b) => parseRdpOpening(b));
  t.same(opened.map((o) => o.kind === 'done' && o.value.preconnection !== null), [true, false, false]);
  t.same(opened.map((o) => (o.kind === 'done' ? o.value.request.token : null)), Array(3).fill({ kind: 'msts', value: 'tk1abc.win10' }));
  t.same(opened.map((o) => (o.kind === 'done' ? o.value.request.negotiation?.requestedProtocols ?? null : 'error')), [3, 1, null]);
  for (const b of [...R.FREERDP_RETRIES_AFTER_FAILURE, R.FREERDP_RETRY_AFTER_SSL_NOT_ALLOWED]) {
    t.match(parseRdpOpening(b), { kind: 'done', value: { preconnection: null, request: { token: { kind: 'mstshash', value: 'demo' } } } });
  }
});

// ---------------------------------------------------------------------------------------------
// Properties

const latin1Line = fc.string({ unit: fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c)), maxLength: 60 })
  .filter((s) => !/[\r\n]/.test(s));
const token = fc.option(
  fc.record({ kind: fc.constantFrom('mstshash' as const, 'msts' as const, 'raw' as const), value: latin1Line })
    // A raw token is whatever line precedes the negotiation request: it cannot start like one.
    .filter((tk) => tk.kind !== 'raw' || (tk.value.length > 0 && tk.value.charCodeAt(0) !== 0x01 && !tk.value.startsWith('Cookie: msts'))),
);
const negotiation = fc.option(
  fc.record({
    flags: fc.integer({ min: 0, max: 0xff }).map((f) => f & ~NegRequestFlag.CORRELATION_INFO_PRESENT),
    requestedProtocols: fc.nat({ max: 0xffffffff }),
    correlationId: fc.option(fc.uint8Array({ minLength: 16, maxLength: 16 })),
  }).map((n) => ({ ...n, flags: n.correlationId ? n.flags | NegRequestFlag.CORRELATION_INFO_PRESENT : n.flags })),
);
const request = fc.record({
  dstRef: fc.nat({ max: 0xffff }),
  srcRef: fc.nat({ max: 0xffff }),
  classOption: fc.nat({ max: 0xff }),
  token,
  negotiation,
});

t.test('property: Connection Request round trip, and every proper prefix is "more"', async (t) => {
  fc.assert(
    fc.property(request, (cr) => {
      const bytes = encodeConnectionRequest(cr);
      const r = parseConnectionRequest(bytes);
      if (r.kind !== 'done' || r.length !== bytes.length) return false;
      if (JSON.stringify(r.value) !== JSON.stringify(cr)) return false;
      for (let i = 0; i < bytes.length; i++) if (parseConnectionRequest(bytes.subarray(0, i)).kind !== 'more') return false;
      const stripped = parseConnectionRequest(stripRoutingToken(r.value));
      return stripped.kind === 'done' && stripped.value.token === null && stripped.length <= bytes.length;
    }),
    { seed: SEED, numRuns: 500 },
  );
  t.pass();
});

t.test('property: Connection Confirm and preconnection PDU round trips', async (t) => {
  const confirm = fc.record({
    dstRef: fc.nat({ max: 0xffff }),
    srcRef: fc.nat({ max: 0xffff }),
    classOption: fc.nat({ max: 0xff }),
    negotiation: fc.option(fc.oneof(
      fc.record({ type: fc.constant('response' as const), flags: fc.nat({ max: 0xff }), selectedProtocol: fc.nat({ max: 0xffffffff }) }),
      fc.record({ type: fc.constant('failure' as const), flags: fc.nat({ max: 0xff }), failureCode: fc.nat({ max: 0xffffffff }) }),
    )),
  });
  fc.assert(
    fc.property(confirm, (cc: ConnectionConfirm) => {
      const r = parseConnectionConfirm(encodeConnectionConfirm(cc));
      return r.kind === 'done' && JSON.stringify(r.value) === JSON.stringify(cc);
    }),
    { seed: SEED, numRuns: 500 },
  );
  const blob = fc.option(fc.string({ unit: 'binary', maxLength: 200 }).filter((s) => !s.endsWith('\0')));
  fc.assert(
    fc.property(fc.nat({ max: 0xffffffff }), blob, (id, b) => {
      const bytes = encodePreconnectionPdu({ id, blob: b });
      const r = parsePreconnectionPdu(bytes);
      const detected = rdpPreconnectionDetector.detect(bytes);
      return r.kind === 'done' && r.length === bytes.length && r.value.id === id && r.value.blob === b && detected.kind === 'match';
    }),
    { seed: SEED, numRuns: 500 },
  );
  t.pass();
});

t.test('property: junk never throws, and detectors never contradict parsers', async (t) => {
  const junk = fc.oneof(
    fc.uint8Array({ maxLength: 400 }),
    // Junk that gets past the first checks: a plausible TPKT header, random rest.
    fc.tuple(fc.integer({ min: 11, max: X224_MAX_LENGTH }), fc.uint8Array({ maxLength: 300 }), fc.boolean()).map(([len, rest, cc]) => {
      const b = Buffer.alloc(6 + rest.length);
      b.set([3, 0, len >> 8, len & 0xff, len - 5, cc ? 0xd0 : 0xe0]);
      b.set(rest, 6);
      return new Uint8Array(b);
    }),
    fc.tuple(fc.nat({ max: 300 }), fc.uint8Array({ maxLength: 700 })).map(([n, rest]) => {
      const b = Buffer.alloc(18 + rest.length);
      b.writeUInt32LE(18 + 2 * n, 0);
      b.writeUInt32LE(2, 8);
      b.writeUInt16LE(n, 16);
      b.set(rest, 18);
      return new Uint8Array(b);
    }),
  );
  fc.assert(
    fc.property(junk, (bytes) => {
      const cr = parseConnectionRequest(bytes);
      parseConnectionConfirm(bytes);
      const pcb = parsePreconnectionPdu(bytes);
      parseRdpOpening(bytes);
      const d = rdpDetector.detect(bytes);
      const p = rdpPreconnectionDetector.detect(bytes);
      if (cr.kind === 'done' && d.kind !== 'match') return false;
      if (pcb.kind === 'done' && p.kind !== 'match') return false;
      if (d.kind === 'no' && cr.kind !== 'error') return false;
      if (p.kind === 'no' && pcb.kind !== 'error') return false;
      return true;
    }),
    { seed: SEED, numRuns: 5000 },
  );
  t.pass();
});
