/**
 * One conformance suite for every detector (hono's shared-suite habit), table tests over named
 * fixtures (too short, invalid, semi-valid, valid, extra byte), and property tests: any input,
 * split any way, gets the same final answer, and a detector never throws.
 */
import t from 'tap';
import fc from 'fast-check';
import { FUZZ_SEED, runs } from '../helpers/fuzz.js';
import type { Detector } from '../../protocols/detector.js';
import { tlsDetector } from '../../protocols/tls.js';
import { httpDetector } from '../../protocols/http.js';
import { V2_DEFAULT_MAX, V2_HARD_MAX, V2_MIN_MAX, createProxyDetector, proxyDetector } from '../../protocols/proxy.js';
import { spiceDetector } from '../../protocols/spice.js';
import { rdcleanpathDetector } from '../../protocols/rdcleanpath.js';
import { vncDetector } from '../../protocols/vnc.js';
import { rdpDetector, rdpPreconnectionDetector } from '../../protocols/rdp.js';
import { rdgRequestDetector } from '../../protocols/tsgu.js';
import { Peeked, candidates, decide } from '../../gateway/listener.js';
import * as F from '../fixtures/packets.js';
import * as R from '../fixtures/rdp-packets.js';

interface Case {
  readonly name: string;
  readonly bytes: Buffer;
  readonly expect: 'match' | 'no' | 'more';
}

const suites: Array<{ detector: Detector<unknown>; valid: Buffer[]; cases: Case[] }> = [
  {
    detector: tlsDetector as Detector<unknown>,
    valid: [F.TLS_CLIENT_HELLO],
    cases: [
      { name: 'server hello is not a client hello', bytes: F.TLS_SERVER_HELLO, expect: 'no' },
      { name: 'record version 3.9', bytes: F.hex('16 03 09 00 10 01'), expect: 'no' },
      { name: 'zero-length record', bytes: F.hex('16 03 01 00 00 01'), expect: 'no' },
      { name: 'oversized record', bytes: F.hex('16 03 01 ff ff 01'), expect: 'no' },
      { name: 'HTTP', bytes: F.BROWSER_GET, expect: 'no' },
    ],
  },
  {
    detector: httpDetector as Detector<unknown>,
    valid: [F.CURL_CONNECT, F.SOCAT_CONNECT, F.GLIB_CONNECT, F.BROWSER_GET],
    cases: [
      { name: 'lowercase method', bytes: Buffer.from('get / HTTP/1.1\r\n'), expect: 'no' },
      { name: 'method without space', bytes: Buffer.from('GETX / HTTP/1.1\r\n'), expect: 'no' },
      { name: 'unknown method', bytes: Buffer.from('BREW /pot HTCPCP/1.0\r\n'), expect: 'no' },
      { name: 'TLS', bytes: F.TLS_CLIENT_HELLO, expect: 'no' },
      { name: 'SSH banner', bytes: F.SSH_BANNER, expect: 'no' },
    ],
  },
  {
    detector: proxyDetector as Detector<unknown>,
    valid: [F.PROXY_V1_TCP4, F.PROXY_V1_TCP6, F.PROXY_V1_UNKNOWN, F.PROXY_V2_TCP4, F.PROXY_V2_LOCAL, F.PROXY_V2_TCP6, F.PROXY_V2_CLOUD_TLVS],
    cases: [
      { name: 'v1 with bad address', bytes: Buffer.from('PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n'), expect: 'no' },
      { name: 'v1 family mismatch', bytes: Buffer.from('PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n'), expect: 'no' },
      { name: 'v1 port out of range', bytes: Buffer.from('PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n'), expect: 'no' },
      { name: 'v1 without CRLF within 107 bytes', bytes: Buffer.from(`PROXY TCP4 ${'1'.repeat(120)}`), expect: 'no' },
      { name: 'v2 wrong version nibble', bytes: Buffer.concat([F.PROXY_V2_SIG, F.hex('11 11 00 0c')]), expect: 'no' },
      { name: 'v2 huge length', bytes: Buffer.concat([F.PROXY_V2_SIG, F.hex('21 11 ff ff')]), expect: 'no' },
      { name: 'v2 TCP4 with short address block', bytes: Buffer.concat([F.PROXY_V2_SIG, F.hex('21 11 00 04 01 02 03 04')]), expect: 'no' },
      { name: 'HTTP', bytes: F.BROWSER_GET, expect: 'no' },
    ],
  },
  {
    detector: rdcleanpathDetector as Detector<unknown>,
    // IronRDP's own test request and HTTP-error response (ironrdp-testsuite-core, rdcleanpath.rs).
    valid: [
      F.hex('3032 a004 0202 0d3e a20d 0c0b 64657374696e6174696f6e a30c 0c0a 70726f78792061757468 a505 0c03 504342 a606 0404 deadbeff'),
      F.hex('3015 a004 0202 0d3e a10d 300b a003 0201 01 a104 0202 01f4'),
    ],
    cases: [
      { name: 'version 5', bytes: F.hex('3005 a003 0201 05'), expect: 'no' },
      { name: 'indefinite length', bytes: F.hex('3080 a004 0202 0d3e'), expect: 'no' },
      { name: 'over 64 KiB', bytes: F.hex('3083 010000'), expect: 'no' },
      { name: 'TLS', bytes: F.TLS_CLIENT_HELLO, expect: 'no' },
    ],
  },
  {
    detector: spiceDetector as Detector<unknown>,
    valid: [F.SPICE_LINK],
    cases: [{ name: 'RFB', bytes: F.RFB_BANNER, expect: 'no' }],
  },
  {
    detector: rdpDetector as Detector<unknown>,
    valid: [R.FREERDP_CR, R.FREERDP_CR_RDP_SECURITY, R.FREERDP_CR_LOAD_BALANCE_INFO, R.FREERDP_CR_MSTS],
    cases: [
      { name: 'TPKT header only', bytes: F.hex('03 00 00 2a 25'), expect: 'more' },
      { name: 'TPKT version 2', bytes: F.hex('02 00 00 13 0e e0'), expect: 'no' },
      { name: 'length longer than one LI byte allows', bytes: F.hex('03 00 01 04 ff e0'), expect: 'no' },
      { name: 'LI disagrees with the TPKT length', bytes: F.hex('03 00 00 13 0f e0'), expect: 'no' },
      { name: 'a Connection Confirm (a server, not a client)', bytes: R.SHADOW_CC_SSL, expect: 'no' },
      { name: 'a preconnection PDU (detected separately)', bytes: R.FREERDP_PCB_BLOB, expect: 'no' },
      { name: 'TLS', bytes: F.TLS_CLIENT_HELLO, expect: 'no' },
    ],
  },
  {
    detector: rdpPreconnectionDetector as Detector<unknown>,
    valid: [R.FREERDP_PCB_BLOB, R.FREERDP_PCB_ID_ONLY, F.hex('10000000 00000000 01000000 07000000')],
    cases: [
      { name: 'fixed part cut short', bytes: R.FREERDP_PCB_BLOB.subarray(0, 17), expect: 'more' },
      { name: 'cbSize 17', bytes: F.hex('11000000 00000000 02000000 00000000 0000'), expect: 'no' },
      { name: 'cbSize beyond the blob cap', bytes: F.hex('00 10 00 00'), expect: 'no' },
      { name: 'Flags set', bytes: F.hex('10000000 01000000 01000000 00000000'), expect: 'no' },
      { name: 'v1 size with version 2', bytes: F.hex('10000000 00000000 02000000 00000000'), expect: 'no' },
      { name: 'cchPCB disagrees with cbSize', bytes: F.hex('2e000000 00000000 02000000 00000000 0d00'), expect: 'no' },
      { name: 'TPKT', bytes: R.FREERDP_CR, expect: 'no' },
      { name: 'TLS', bytes: F.TLS_CLIENT_HELLO, expect: 'no' },
      { name: 'HTTP', bytes: F.BROWSER_GET, expect: 'no' },
      { name: 'PROXY v2', bytes: F.PROXY_V2_TCP4, expect: 'no' },
    ],
  },
  {
    detector: rdgRequestDetector as Detector<unknown>,
    valid: [R.FREERDP_RDG_OUT_WEBSOCKET, R.FREERDP_RDG_IN_PROBE, R.FREERDP_RDG_IN_CHUNKED].map((s) => Buffer.from(s, 'latin1')),
    cases: [
      { name: 'method without its space', bytes: Buffer.from('RDG_IN_DATA'), expect: 'more' },
      { name: 'longer method', bytes: Buffer.from('RDG_OUT_DATAX / HTTP/1.1'), expect: 'no' },
      { name: 'lower case', bytes: Buffer.from('rdg_out_data / HTTP/1.1'), expect: 'no' },
      { name: 'a plain GET (Node handles it)', bytes: F.BROWSER_GET, expect: 'no' },
      { name: 'RPC over HTTP', bytes: Buffer.from('RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1'), expect: 'no' },
    ],
  },
  {
    detector: vncDetector as Detector<unknown>,
    valid: [F.RFB_BANNER, Buffer.from('RFB 003.003\n')],
    cases: [
      { name: 'letters in version', bytes: Buffer.from('RFB 00a.008\n'), expect: 'no' },
      { name: 'missing newline', bytes: Buffer.from('RFB 003.008 '), expect: 'no' },
    ],
  },
];

for (const { detector, valid, cases } of suites) {
  t.test(`${detector.name}: conformance`, async (t) => {
    t.same(detector.detect(Buffer.alloc(0)), { kind: 'more' }, 'empty input needs more bytes');
    for (const v of valid) {
      t.equal(detector.detect(v).kind, 'match', `valid ${JSON.stringify(v.subarray(0, 24).toString('latin1'))}`);
      t.equal(detector.detect(Buffer.concat([v, Buffer.from([0x00])])).kind, 'match', 'extra byte after a valid prefix still matches');
      // Every proper prefix of a valid input is either "more" or already a match, never "no".
      for (let i = 1; i < v.length; i++) {
        const kind = detector.detect(v.subarray(0, i)).kind;
        if (kind === 'no') t.fail(`prefix of length ${i} said no`);
      }
    }
    for (const c of cases) t.equal(detector.detect(c.bytes).kind, c.expect, c.name);
  });

  t.test(`${detector.name}: total and deterministic over any bytes`, async (t) => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const a = detector.detect(bytes);
        const b = detector.detect(Buffer.from(bytes));
        return ['match', 'no', 'more'].includes(a.kind) && a.kind === b.kind;
      }),
      { numRuns: runs(3000), seed: FUZZ_SEED },
    );
    t.pass('no input made a detector throw or change its mind');
  });

  t.test(`${detector.name}: once it says no, more bytes never make it say yes`, async (t) => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 200 }), (a, b) => {
        if (detector.detect(a).kind !== 'no') return true;
        return detector.detect(Buffer.concat([a, b])).kind === 'no';
      }),
      { numRuns: runs(3000), seed: FUZZ_SEED },
    );
    t.pass();
  });
}

t.test('PROXY headers parse to the client address', async (t) => {
  const v1 = proxyDetector.detect(F.PROXY_V1_TCP4);
  t.same(v1, { kind: 'match', info: { version: 1, headerLength: F.PROXY_V1_TCP4.length, source: { address: '192.0.2.10', port: 56324 } } });
  const v2 = proxyDetector.detect(F.PROXY_V2_TCP4);
  t.same(v2, { kind: 'match', info: { version: 2, headerLength: 28, source: { address: '192.0.2.10', port: 56324 } } });
  const v6 = proxyDetector.detect(F.PROXY_V2_TCP6);
  t.same(v6, { kind: 'match', info: { version: 2, headerLength: 52, source: { address: '2001:db8::1', port: 1234 } } });
  const local = proxyDetector.detect(F.PROXY_V2_LOCAL);
  t.same(local, { kind: 'match', info: { version: 2, headerLength: 16 } });
});

t.test('PROXY v2 size: TLVs up to the configured bound, three-way, never past the header', async (t) => {
  const bound = 1024;
  const d = createProxyDetector({ maxV2HeaderBytes: bound });
  const atLimit = F.proxyV2Tcp4WithTlvs(bound);
  const over = F.proxyV2Tcp4WithTlvs(bound + 1);
  const source = { address: '192.0.2.10', port: 56324 };
  const table: Array<[string, Buffer, 'match' | 'no' | 'more']> = [
    ['too short: signature and part of the fixed header', Buffer.concat([F.PROXY_V2_SIG, F.hex('21 11')]), 'more'],
    ['too short: the header at the limit, not all in yet', atLimit.subarray(0, bound - 1), 'more'],
    ['invalid: version nibble 1', Buffer.concat([F.PROXY_V2_SIG, F.hex('11 11 00 0c')]), 'no'],
    ['invalid: command 2', Buffer.concat([F.PROXY_V2_SIG, F.hex('22 11 00 0c')]), 'no'],
    ['invalid: TCP4 with an 8-byte address block', Buffer.concat([F.PROXY_V2_SIG, F.hex('21 11 00 08 01 02 03 04 05 06 07 08')]), 'no'],
    ['valid with the cloud balancers\' TLVs (1,000 bytes)', F.PROXY_V2_CLOUD_TLVS, 'match'],
    ['exactly at the limit', atLimit, 'match'],
    ['one byte over the limit', over, 'no'],
    ['one byte over: refused as soon as the length field is in', over.subarray(0, 16), 'no'],
  ];
  for (const [name, bytes, kind] of table) t.equal(d.detect(bytes).kind, kind, name);
  t.same(d.detect(atLimit), { kind: 'match', info: { version: 2, headerLength: bound, source } }, 'the header at the limit parses to the client');
  const cloud = d.detect(F.PROXY_V2_CLOUD_TLVS);
  t.same(cloud, { kind: 'match', info: { version: 2, headerLength: 1000, source } }, 'TLVs are skipped, the addresses read');
  // What follows the header is the client's: headerLength stops at the header.
  const followed = d.detect(Buffer.concat([atLimit, F.TLS_CLIENT_HELLO]));
  t.equal(followed.kind === 'match' ? followed.info.headerLength : -1, bound, 'a ClientHello after the header is not part of it');

  t.equal(proxyDetector.detect(F.proxyV2Tcp4WithTlvs(V2_DEFAULT_MAX)).kind, 'match', `default: ${V2_DEFAULT_MAX} bytes accepted`);
  t.equal(proxyDetector.detect(F.proxyV2Tcp4WithTlvs(V2_DEFAULT_MAX + 1)).kind, 'no', `default: ${V2_DEFAULT_MAX + 1} refused`);
  const widest = createProxyDetector({ maxV2HeaderBytes: 1e9 });
  t.equal(widest.detect(F.proxyV2Tcp4WithTlvs(V2_HARD_MAX)).kind, 'match', 'a bound above the spec is clamped to 16 + 65535, the largest header there is');
  const narrowest = createProxyDetector({ maxV2HeaderBytes: 0 });
  t.equal(narrowest.detect(F.proxyV2Tcp4WithTlvs(V2_MIN_MAX)).kind, 'match', 'a bound below an AF_UNIX address block is raised to it');
  t.equal(narrowest.detect(F.proxyV2Tcp4WithTlvs(V2_MIN_MAX + 1)).kind, 'no');

  // The listener's table carries the configured detector.
  const bounded = candidates(d);
  t.equal(decide(atLimit, true, bounded).kind, 'route', 'decide: at the limit, a PROXY route');
  t.equal(decide(over, true, bounded).kind, 'reject', 'decide: one byte over, rejected');
  t.equal(decide(F.PROXY_V2_CLOUD_TLVS, true).kind, 'route', 'decide with the default table: the cloud TLVs are fine');

  // Byte by byte, the header at the limit is "more" until its last byte, then a match.
  let first = -1;
  for (let i = 1; i <= atLimit.length && first < 0; i++) {
    const k = d.detect(atLimit.subarray(0, i)).kind;
    if (k === 'no') t.fail(`prefix of ${i} bytes said no`);
    if (k === 'match') first = i;
  }
  t.equal(first, bound, 'matches exactly when the last header byte is in');
});

t.test('the listener decision: first bytes of real clients, any split', async (t) => {
  const table: Array<[string, Buffer, string]> = [
    ['curl TLS', F.TLS_CLIENT_HELLO, 'tls'],
    ['curl CONNECT', F.CURL_CONNECT, 'http'],
    ['socat CONNECT', F.SOCAT_CONNECT, 'http'],
    ['PROXY v1', F.PROXY_V1_TCP4, 'proxy'],
    ['PROXY v2', F.PROXY_V2_TCP4, 'proxy'],
    ['xfreerdp Connection Request', R.FREERDP_CR, 'rdp'],
    ['xfreerdp /load-balance-info:', R.FREERDP_CR_LOAD_BALANCE_INFO, 'rdp'],
    ['xfreerdp /pcb: (preconnection PDU, then the request)', R.FREERDP_PCB_THEN_CR, 'rdp'],
    ['xfreerdp /pcid: alone (v2, empty blob)', R.FREERDP_PCB_ID_ONLY, 'rdp'],
  ];
  for (const [name, bytes, route] of table) {
    const v = decide(bytes, true);
    t.equal(v.kind === 'route' ? v.route : v.kind, route, name);
    // Fed one byte at a time, the decision is "more" until it is the same route.
    let final = '';
    for (let i = 1; i <= bytes.length && !final; i++) {
      const d = decide(bytes.subarray(0, i), true);
      if (d.kind === 'route') final = d.route;
      else if (d.kind === 'reject') final = 'reject';
    }
    t.equal(final, route, `${name}, byte by byte`);
  }
  t.equal(decide(F.SSH_BANNER, true).kind, 'reject', 'SSH is rejected');
  const noNative = candidates(undefined, { nativeRdp: false });
  t.equal(decide(F.RDP_X224_CR, true, noNative).kind, 'reject', 'native RDP: rejected when nativeRdp.enabled is false');
  t.equal(decide(R.FREERDP_PCB_THEN_CR, true, noNative).kind, 'reject', '... and so is a preconnection PDU');
  t.equal(decide(F.CURL_CONNECT, true, noNative).kind, 'route', '... while the rest of the table is unchanged');
  // Behind a trusted balancer, native RDP comes after the PROXY header like anything else.
  t.match(decide(R.FREERDP_PCB_THEN_CR, false), { kind: 'route', route: 'rdp' }, 'after a PROXY header too');
  t.equal(decide(Buffer.from([0x00, 0x01, 0x02]), true).kind, 'reject', 'garbage');
  t.equal(decide(Buffer.from([0x00, 0x01]), true).kind, 'more', '00 01 could still be a preconnection PDU of 256 bytes');
  t.equal(decide(F.PROXY_V1_TCP4, false).kind, 'reject', 'a second PROXY header is refused');

  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(300), (bytes, cut) => {
      const whole = decide(bytes, true);
      if (whole.kind === 'more') return true;
      const head = decide(bytes.subarray(0, Math.min(cut, bytes.length)), true);
      // A shorter prefix never reaches a different final decision.
      return head.kind === 'more' || (head.kind === whole.kind && routeOf(head) === routeOf(whole));
    }),
    { numRuns: runs(3000), seed: FUZZ_SEED },
  );
});

const routeOf = (v: ReturnType<typeof decide>): string => (v.kind === 'route' ? v.route : v.kind);

/** Real first bytes, cut anywhere and followed by anything: inputs near every route's edge. */
const nearReal = fc
  .tuple(
    fc.constantFrom(F.TLS_CLIENT_HELLO, F.CURL_CONNECT, F.PROXY_V2_TCP4, R.FREERDP_CR, R.FREERDP_CR_LOAD_BALANCE_INFO, R.FREERDP_PCB_THEN_CR, R.FREERDP_PCB_ID_ONLY, R.SHADOW_CC_SSL),
    fc.nat(200),
    fc.uint8Array({ maxLength: 40 }),
  )
  .map(([real, cut, tail]) => Buffer.concat([real.subarray(0, cut), tail]));

t.test('the listener table: at most one detector matches any bytes, so the order of the table never decides', async (t) => {
  const table = candidates();
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), nearReal), (bytes) => {
      const matches = table.filter((c) => c.detector.detect(bytes).kind === 'match').map((c) => c.route);
      // The two native RDP detectors share one route; a PROXY header is decided before the rest.
      return matches.length <= 1;
    }),
    { numRuns: runs(5000), seed: FUZZ_SEED },
  );
  t.pass('no two detectors matched the same bytes');
});

t.test('native RDP openings reach the rdp route in any split, from the first TCP segment on', async (t) => {
  fc.assert(
    fc.property(fc.constantFrom(R.FREERDP_CR, R.FREERDP_CR_RDP_SECURITY, R.FREERDP_CR_MSTS, R.FREERDP_PCB_THEN_CR, R.FREERDP_PCB_THEN_MSTS_CR), fc.array(fc.nat(300), { maxLength: 6 }), (bytes, cuts) => {
      // The listener sees growing prefixes; every one is "more" or the rdp route, never a reject.
      for (const cut of [...cuts].sort((a, b) => a - b)) {
        const v = decide(bytes.subarray(0, Math.min(cut, bytes.length)), true);
        if (v.kind === 'reject' || (v.kind === 'route' && v.route !== 'rdp')) return false;
      }
      return routeOf(decide(bytes, true)) === 'rdp';
    }),
    { numRuns: runs(2000), seed: FUZZ_SEED },
  );
  t.pass();
});

t.test('the listener\'s peek buffer: any split gives the same bytes, and buffers handed in are never written', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 40 }), (initial, chunks) => {
      const first = Buffer.from(initial);
      const given = chunks.map((c) => Buffer.from(c));
      const copies = [first, ...given].map((b) => Buffer.from(b));
      const p = new Peeked(first);
      for (const c of given) p.append(c);
      const expected = Buffer.concat(copies);
      return p.length === expected.length && p.bytes.equals(expected) && [first, ...given].every((b, i) => b.equals(copies[i]!));
    }),
    { numRuns: runs(2000), seed: FUZZ_SEED },
  );
  // 65,551 one-byte appends (the largest PROXY v2 header, trickled) copy linearly: a few ms, not seconds.
  const p = new Peeked(Buffer.alloc(0));
  const one = Buffer.from([0x41]);
  const started = process.hrtime.bigint();
  for (let i = 0; i < 65551; i++) p.append(one);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  t.equal(p.length, 65551);
  t.ok(ms < 500, `65,551 one-byte appends in ${ms.toFixed(1)} ms`);
});
