/**
 * The RD Gateway's pure parts: the MS-TSGU flow (gateway/rdg/flow.ts) fed FreeRDP 2.11.7's own
 * packets in order and out of order; the refusal for each stage and HRESULT mapping (full
 * HRESULTs only: FreeRDP tests FAILED(hr)); the PAA cookie's text; the WebSocket frame codec
 * (protocols/websocket-frame.ts) with property tests over any split and junk.
 */
import t from 'tap';
import fc from 'fast-check';
import {
  type TsguPacket, HResult, decodePacket, encodePacket, isFailure,
} from '../../protocols/tsgu.js';
import { Opcode, encodeClientFrame, encodeFrame, parseFrame } from '../../protocols/websocket-frame.js';
import { TsguFlow, cookieText } from '../../gateway/rdg/flow.js';
import { hresultFor } from '../../gateway/tunnel/legs/rdg.js';
import { ERRORS, type ErrorCode } from '../../gateway/errors.js';
import {
  FREERDP_TSGU_CHANNEL_CREATE, FREERDP_TSGU_DATA_CR, FREERDP_TSGU_HANDSHAKE, FREERDP_TSGU_TUNNEL_AUTH, FREERDP_TSGU_TUNNEL_CREATE,
} from '../fixtures/rdp-packets.js';
import { fuzz } from '../helpers/fuzz.js';

const packet = (b: Buffer): TsguPacket => {
  const d = decodePacket(b);
  if (d.kind !== 'done') throw new Error('fixture does not decode');
  return d.value;
};
const decoded = (b: Buffer): TsguPacket => packet(b);

t.test('FreeRDP\'s packets in order: answers, then the two questions, then data', async (t) => {
  const f = new TsguFlow();
  const hs = f.receive(packet(FREERDP_TSGU_HANDSHAKE));
  t.equal(hs.kind, 'answer');
  if (hs.kind === 'answer') t.match(decoded(hs.packets[0]!), { type: 'handshake-response', errorCode: 0, extendedAuth: 2 }, 'handshake answered, PAA');
  const tc = f.receive(packet(FREERDP_TSGU_TUNNEL_CREATE));
  t.same(tc, { kind: 'tunnel', cookie: 'tk1abcGatToken' }, 'tunnel create asks about the cookie (UTF-16, NUL dropped)');
  t.match(decoded(f.tunnelAccepted()), { type: 'tunnel-response', statusCode: 0, tunnelId: 1 });
  const ta = f.receive(packet(FREERDP_TSGU_TUNNEL_AUTH));
  t.equal(ta.kind, 'answer');
  if (ta.kind === 'answer') t.match(decoded(ta.packets[0]!), { type: 'tunnel-auth-response', errorCode: 0 });
  t.same(f.receive(packet(FREERDP_TSGU_CHANNEL_CREATE)), { kind: 'channel', resource: 'win10', port: 3389 }, 'channel create names the resource and port');
  t.equal(f.stage, 'opening');
  t.match(decoded(f.channelOpened(7)), { type: 'channel-response', errorCode: 0, channelId: 7 });
  const d = f.receive(packet(FREERDP_TSGU_DATA_CR));
  t.equal(d.kind, 'data', 'then data');
  t.same(f.receive({ type: 'keepalive' }), { kind: 'answer', packets: [] }, 'keep-alives need no answer');
  const close = f.receive({ type: 'close-channel', statusCode: 0 });
  t.equal(close.kind, 'close');
  if (close.kind === 'close') t.match(decoded(close.packets[0]!), { type: 'close-channel-response', statusCode: 0 });
  t.equal(f.stage, 'closed');
});

t.test('out of order, or packets only a gateway sends: a violation, and the flow is over', async (t) => {
  const orders: Array<[string, TsguPacket[]]> = [
    ['channel create first', [packet(FREERDP_TSGU_CHANNEL_CREATE)]],
    ['data first', [packet(FREERDP_TSGU_DATA_CR)]],
    ['keep-alive first', [{ type: 'keepalive' }]],
    ['handshake twice', [packet(FREERDP_TSGU_HANDSHAKE), packet(FREERDP_TSGU_HANDSHAKE)]],
    ['tunnel authorize before tunnel create', [packet(FREERDP_TSGU_HANDSHAKE), packet(FREERDP_TSGU_TUNNEL_AUTH)]],
    ['a gateway\'s own answer', [{ type: 'handshake-response', errorCode: 0, versionMajor: 1, versionMinor: 0, serverVersion: 0, extendedAuth: 2 }]],
    ['an unknown packet type', [{ type: 'unknown', packetType: 0x77, body: Buffer.alloc(0) }]],
    ['close before the channel', [packet(FREERDP_TSGU_HANDSHAKE), { type: 'close-channel', statusCode: 0 }]],
  ];
  for (const [what, packets] of orders) {
    const f = new TsguFlow();
    let last = f.receive(packets[0]!);
    for (const p of packets.slice(1)) last = f.receive(p);
    t.equal(last.kind, 'violation', what);
    t.equal(f.stage, 'closed', `${what}: over`);
  }
  const f = new TsguFlow();
  f.receive(packet(FREERDP_TSGU_HANDSHAKE));
  f.receive(packet(FREERDP_TSGU_TUNNEL_CREATE));
  t.equal(f.receive(packet(FREERDP_TSGU_TUNNEL_AUTH)).kind, 'violation', 'tunnel authorize while the cookie is being judged');
});

t.test('a handshake the gateway cannot serve is refused in the handshake response', async (t) => {
  const noPaa = new TsguFlow().receive({ type: 'handshake-request', versionMajor: 1, versionMinor: 0, clientVersion: 0, extendedAuth: 0 });
  t.equal(noPaa.kind, 'close');
  if (noPaa.kind === 'close') t.match(decoded(noPaa.packets[0]!), { type: 'handshake-response', errorCode: HResult.E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD }, 'no PAA: unsupported authentication');
  const v2 = new TsguFlow().receive({ type: 'handshake-request', versionMajor: 2, versionMinor: 0, clientVersion: 0, extendedAuth: 2 });
  if (v2.kind === 'close') t.match(decoded(v2.packets[0]!), { type: 'handshake-response', errorCode: HResult.E_PROXY_CAPABILITYMISMATCH }, 'version 2: capability mismatch');
  const f = new TsguFlow();
  for (const p of [FREERDP_TSGU_HANDSHAKE, FREERDP_TSGU_TUNNEL_CREATE]) f.receive(packet(p));
  f.tunnelAccepted();
  f.receive(packet(FREERDP_TSGU_TUNNEL_AUTH));
  const notRdp = f.receive({ type: 'channel-create', resources: ['win'], altResources: [], port: 3389, protocol: 4 });
  if (notRdp.kind === 'close') t.match(decoded(notRdp.packets[0]!), { type: 'channel-response', errorCode: HResult.E_PROXY_RAP_ACCESSDENIED }, 'a channel protocol other than RDP');
});

t.test('each stage refuses with its own answer; once open, with CLOSE_CHANNEL', async (t) => {
  const hr = HResult.E_PROXY_RAP_ACCESSDENIED;
  t.match(decoded(new TsguFlow().refusal(hr)), { type: 'handshake-response', errorCode: hr }, 'before the handshake');
  const steps: Array<[Buffer | undefined, string]> = [
    [FREERDP_TSGU_HANDSHAKE, 'tunnel-response'],
    [FREERDP_TSGU_TUNNEL_CREATE, 'tunnel-auth-response'],
    [FREERDP_TSGU_TUNNEL_AUTH, 'channel-response'],
    [FREERDP_TSGU_CHANNEL_CREATE, 'channel-response'],
    [undefined, 'close-channel'],
  ];
  for (let n = 1; n <= steps.length; n++) {
    const f = new TsguFlow();
    for (const [p] of steps.slice(0, n)) {
      if (!p) {
        f.channelOpened(1);
        continue;
      }
      f.receive(packet(p));
      if (p === FREERDP_TSGU_TUNNEL_CREATE) f.tunnelAccepted();
    }
    const type = steps[n - 1]![1];
    const r = decoded(f.refusal(hr));
    t.equal(r.type, type, `after ${n} step(s): ${type}`);
  }
});

t.test('every refusal reads as a failure to a client that tests FAILED(hr)', async (t) => {
  for (const code of Object.keys(ERRORS) as ErrorCode[]) t.ok(isFailure(hresultFor(code)), `${code} -> 0x${hresultFor(code).toString(16)}`);
  t.equal(hresultFor('ONEPORT_ERR_TICKET_INVALID'), HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED);
  t.equal(hresultFor('ONEPORT_ERR_CONSOLE_UNREACHABLE'), 0x800759dd, 'E_PROXY_TS_CONNECTFAILED in full');
});

t.test('the PAA cookie as text', async (t) => {
  t.equal(cookieText(Buffer.from('abc\0', 'utf16le')), 'abc', 'UTF-16LE with its NUL');
  t.equal(cookieText(Buffer.from('abc', 'latin1')), 'abc', 'plain ASCII (odd length)');
  t.equal(cookieText(Buffer.from('a b\0', 'utf16le')), undefined, 'spaces: no ticket');
  t.equal(cookieText(Buffer.alloc(0)), undefined, 'empty');
  t.equal(cookieText(Buffer.from('x'.repeat(300), 'latin1')), undefined, 'too long');
});

t.test('WebSocket frames: masked client frames in, unmasked server frames out', async (t) => {
  const payload = Buffer.from('hello');
  const f = parseFrame(encodeClientFrame(Opcode.BINARY, payload), 100);
  t.match(f, { kind: 'done', value: { fin: true, opcode: Opcode.BINARY } });
  if (f.kind === 'done') t.same(f.value.payload, payload, 'unmasked');
  for (const n of [0, 125, 126, 65535, 65536]) {
    const b = Buffer.alloc(n, 7);
    const out = encodeFrame(Opcode.BINARY, b);
    t.equal(out.length, n + (n < 126 ? 2 : n < 65536 ? 4 : 10), `server frame of ${n} bytes: minimal header`);
    t.equal(out[1]! & 0x80, 0, 'not masked');
    const back = parseFrame(encodeClientFrame(Opcode.BINARY, b), 70_000);
    t.equal(back.kind === 'done' && back.value.payload.length, n, `client frame of ${n} bytes parses`);
  }
  const errors: Array<[string, Buffer, string]> = [
    ['unmasked', Buffer.from([0x82, 0x01, 0x00]), 'not-masked'],
    ['reserved bits', Buffer.from([0xf2, 0x80, 0, 0, 0, 0]), 'reserved-bits'],
    ['opcode 3', Buffer.from([0x83, 0x80, 0, 0, 0, 0]), 'bad-opcode'],
    ['long ping', Buffer.from([0x89, 0xfe, 0, 126]), 'control-too-long'],
    ['fragmented close', Buffer.from([0x08, 0x80]), 'control-fragmented'],
    ['over the cap', Buffer.from([0x82, 0xfe, 0x01, 0x00]), 'payload-too-large'],
    ['64-bit length with its top bit', Buffer.from([0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]), 'bad-length'],
    ['4 GiB', Buffer.from([0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]), 'payload-too-large'],
  ];
  for (const [what, b, code] of errors) t.match(parseFrame(b, 255), { kind: 'error', code }, what);
  t.match(parseFrame(Buffer.from([0x82, 0xfe, 0x01]), 255), { kind: 'more' }, 'a length not yet whole');
  t.match(parseFrame(Buffer.from([0x82, 0xfe, 0x01, 0x00]), 10), { kind: 'error', code: 'payload-too-large' }, 'refused before any payload is awaited');
});

t.test('property: any split of a stream of client frames gives the same payloads', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 8 }), (payloads, cuts) => {
      const stream = Buffer.concat(payloads.map((p) => encodeClientFrame(Opcode.BINARY, p, Buffer.from([1, 2, 3, 4]))));
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      let pending = Buffer.alloc(0);
      const got: Buffer[] = [];
      let from = 0;
      for (const at of [...points, stream.length]) {
        pending = Buffer.concat([pending, stream.subarray(from, at)]);
        from = at;
        for (;;) {
          const f = parseFrame(pending, 1000);
          if (f.kind !== 'done') break;
          got.push(f.value.payload);
          pending = pending.subarray(f.length);
        }
      }
      return got.length === payloads.length && got.every((g, i) => g.equals(Buffer.from(payloads[i]!)));
    }),
    fuzz(200),
  );
  t.pass('payloads kept across every split');
});

t.test('property: junk frames never throw, and every answer is bounded', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.integer({ min: 0, max: 70_000 }), (junk, cap) => {
      const f = parseFrame(Buffer.from(junk), cap);
      return f.kind === 'more' || f.kind === 'error' || (f.value.payload.length <= cap && f.length <= junk.length);
    }),
    fuzz(500),
  );
  t.pass('total and bounded');
});

t.test('encodePacket output FreeRDP sent round-trips through the flow\'s answers', async (t) => {
  // The flow's answers decode as what they claim to be (the codec is the one FreeRDP accepted).
  const f = new TsguFlow();
  const hs = f.receive(packet(FREERDP_TSGU_HANDSHAKE));
  if (hs.kind === 'answer') t.same(encodePacket(decoded(hs.packets[0]!)), hs.packets[0]);
});
