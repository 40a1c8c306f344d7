/**
 * MS-TSGU HTTP transport (protocols/tsgu.ts): packets FreeRDP 2.11 really sent, the answers a
 * gateway writes, named malformed cases, the streaming reader, the RDG_OUT_DATA / RDG_IN_DATA
 * request heads and the legacy IN channel's chunked body; then properties with a fixed seed.
 */
import t from 'tap';
import fc from 'fast-check';
import {
  type TsguPacket, Capability, DEFAULT_MAX_PACKET_BYTES, ExtendedAuth, HResult, PacketType, RedirFlag, TsguPacketReader,
  decodePacket, encodeData, encodePacket, framePacket, isFailure, parseChunk, parseRdgRequestHead, websocketAccept,
} from '../../protocols/tsgu.js';
import { utf16z } from '../../protocols/parse.js';
import { parseConnectionRequest } from '../../protocols/rdp.js';
import * as R from '../fixtures/rdp-packets.js';

const SEED = 20240611;
const hex = R.hex;

/** Deep, order-stable text for values holding Uint8Array views and bigints. */
function canon(x: unknown): string {
  const walk = (v: unknown): unknown => {
    if (v instanceof Uint8Array) return `bytes:${Buffer.from(v).toString('hex')}`;
    if (typeof v === 'bigint') return `bigint:${v}`;
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, walk((v as Record<string, unknown>)[k])]));
    return v;
  };
  return JSON.stringify(walk(x));
}

function decoded(bytes: Uint8Array): TsguPacket {
  const d = decodePacket(bytes);
  if (d.kind !== 'done') throw new Error(`decode: ${JSON.stringify(d)}`);
  return d.value;
}

t.test('packets FreeRDP 2.11 sent, decoded and re-encoded byte for byte', async (t) => {
  t.same(decoded(R.FREERDP_TSGU_HANDSHAKE), { type: 'handshake-request', versionMajor: 1, versionMinor: 0, clientVersion: 0, extendedAuth: ExtendedAuth.PAA });

  const create = decoded(R.FREERDP_TSGU_TUNNEL_CREATE);
  t.match(create, { type: 'tunnel-create', capabilities: Capability.QUAR_SOH | Capability.MESSAGING_CONSENT_SIGN | Capability.MESSAGING_SERVICE_MSG });
  t.equal(create.type === 'tunnel-create' && create.paaCookie ? utf16z(create.paaCookie) : null, 'tk1abcGatToken', 'the /gat: token is the PAA cookie');
  t.notOk('reauthTunnelContext' in create, 'no reauthentication context');

  t.same(decoded(R.FREERDP_TSGU_TUNNEL_AUTH), { type: 'tunnel-auth', clientName: 'vm' });
  t.same(decoded(R.FREERDP_TSGU_CHANNEL_CREATE), { type: 'channel-create', resources: ['win10'], altResources: [], port: 3389, protocol: 3 });

  const data = decoded(R.FREERDP_TSGU_DATA_CR);
  t.equal(data.type, 'data');
  if (data.type === 'data') t.match(parseConnectionRequest(data.data), { kind: 'done', value: { token: { kind: 'mstshash', value: '\\demo' } } }, 'DATA carries the X.224 request');

  for (const bytes of [R.FREERDP_TSGU_HANDSHAKE, R.FREERDP_TSGU_TUNNEL_CREATE, R.FREERDP_TSGU_TUNNEL_AUTH, R.FREERDP_TSGU_CHANNEL_CREATE, R.FREERDP_TSGU_DATA_CR]) {
    t.same(encodePacket(decoded(bytes)), bytes, `type ${bytes[0]} re-encodes exactly`);
  }
});

t.test('the answers a gateway writes', async (t) => {
  t.same(
    encodePacket({ type: 'handshake-response', errorCode: 0, versionMajor: 1, versionMinor: 0, serverVersion: 0, extendedAuth: ExtendedAuth.PAA }),
    hex('0200 0000 12000000 00000000 01 00 0000 0200'),
  );
  t.same(
    encodePacket({ type: 'tunnel-response', serverVersion: 0, statusCode: 0, tunnelId: 10, capabilities: Capability.IDLE_TIMEOUT }),
    hex('0500 0000 1a000000 0000 00000000 0300 0000 0a000000 02000000'),
    'tunnel id and caps present',
  );
  t.same(
    encodePacket({ type: 'tunnel-response', serverVersion: 0, statusCode: HResult.E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED }),
    hex('0500 0000 12000000 0000 f8590780 0000 0000'),
    'a refused PAA cookie',
  );
  t.same(
    encodePacket({ type: 'tunnel-auth-response', errorCode: 0, redirFlags: RedirFlag.DISABLE_ALL, idleTimeout: 0 }),
    hex('0700 0000 18000000 00000000 0300 0000 00000040 00000000'),
  );
  t.same(encodePacket({ type: 'channel-response', errorCode: 0, channelId: 1 }), hex('0900 0000 14000000 00000000 0100 0000 01000000'));
  t.same(
    encodePacket({ type: 'channel-response', errorCode: 0, channelId: 1, udpPort: 3391, authnCookie: hex('aabb') }),
    hex('0900 0000 1a000000 00000000 0700 0000 01000000 3f0d 0200 aabb'),
    'optional fields in wire order: id, port, cookie',
  );
  t.same(encodePacket({ type: 'keepalive' }), hex('0d00 0000 08000000'));
  t.same(encodePacket({ type: 'close-channel', statusCode: 0 }), hex('1000 0000 0c000000 00000000'));
  t.same(encodePacket({ type: 'close-channel-response', statusCode: 0 }), hex('1100 0000 0c000000 00000000'));
  t.same(decoded(hex('0b00 0000 0e000000 0400 6800 0000')), { type: 'service-message', message: 'h' });

  t.equal(isFailure(HResult.E_PROXY_RAP_ACCESSDENIED), true);
  t.equal(isFailure(HResult.E_PROXY_TS_CONNECTFAILED), false, 'FreeRDP reads the short form as success');

  const big = new Uint8Array(0xffff * 2 + 3).fill(7);
  const parts = encodeData(big);
  t.same(parts.map((p) => p.length), [DEFAULT_MAX_PACKET_BYTES, DEFAULT_MAX_PACKET_BYTES, 8 + 2 + 3], 'large writes become several DATA packets');
  t.throws(() => encodePacket({ type: 'data', data: new Uint8Array(0x10000) }), RangeError);
  t.throws(() => encodePacket({ type: 'channel-create', resources: [], altResources: [], port: 3389, protocol: 3 }), RangeError);
});

t.test('malformed packets: a code, never a throw', async (t) => {
  const cases: Array<[string, Buffer, string]> = [
    ['seven bytes', hex('0100 0000 0e0000'), 'more'],
    ['header of a packet whose body is missing', hex('0100 0000 0e000000'), 'more'],
    ['length below the header', hex('0100 0000 07000000'), 'bad-packet-length'],
    ['length above the cap, refused before the body', hex('0a00 0000 00000200'), 'packet-too-large'],
    ['a 4 GiB claim', hex('0a00 0000 ffffffff'), 'packet-too-large'],
    ['handshake body cut short', hex('0100 0000 0c000000 01 00 0000'), 'truncated'],
    ['PAA flag without a cookie', hex('0400 0000 10000000 00000000 0100 0000'), 'truncated'],
    ['cookie longer than the packet', hex('0400 0000 14000000 00000000 0100 0000 ff00 4100'), 'truncated'],
    ['DATA length past the packet', hex('0a00 0000 0c000000 0500 0102'), 'truncated'],
    ['odd-length client name', hex('0600 0000 0f000000 0000 0300 414243'), 'bad-string'],
    ['channel with no resource', hex('0800 0000 10000000 00 00 3d0d 0300 0000'), 'bad-resource-count'],
    ['channel with 51 resources', hex('0800 0000 10000000 33 00 3d0d 0300 0000'), 'bad-resource-count'],
    ['channel with 4 alternatives', hex('0800 0000 10000000 01 04 3d0d 0300 0000'), 'bad-resource-count'],
    ['close without status', hex('1000 0000 08000000'), 'truncated'],
  ];
  for (const [name, bytes, code] of cases) {
    const d = decodePacket(bytes);
    t.equal(d.kind === 'error' ? d.code : d.kind, code, name);
  }
  t.same(decodePacket(hex('0e00 0000 0a000000 beef')), { kind: 'done', length: 10, value: { type: 'unknown', packetType: 14, body: hex('beef') } }, 'unknown types pass through');
  t.match(decodePacket(Buffer.concat([R.FREERDP_TSGU_HANDSHAKE, hex('ff')])), { kind: 'done', length: 14 }, 'the next byte is not taken');
  t.match(decodePacket(hex('0100 0000 10000000 01 00 0000 0200 ffff')), { kind: 'done', length: 16 }, 'bytes after the known fields are ignored, as FreeRDP does');
  t.match(framePacket(hex('0a00 0000 20000000'), 16), { kind: 'error', code: 'packet-too-large' }, 'a configured cap');
});

t.test('the streaming reader: any split of FreeRDP\'s stream gives its packets', async (t) => {
  const stream = R.FREERDP_TSGU_CLIENT_STREAM;
  const expected = ['handshake-request', 'tunnel-create', 'tunnel-auth', 'channel-create', 'data'];
  for (let cut = 0; cut <= stream.length; cut++) {
    const r = new TsguPacketReader();
    const got: string[] = [];
    for (const chunk of [stream.subarray(0, cut), stream.subarray(cut)]) {
      r.push(chunk);
      for (let n = r.next(); n.kind === 'packet'; n = r.next()) got.push(n.packet.type);
    }
    if (got.join() !== expected.join()) t.fail(`cut at ${cut}: ${got.join()}`);
    if (r.pending !== 0) t.fail(`cut at ${cut}: ${r.pending} bytes left`);
  }
  const r = new TsguPacketReader();
  for (const byte of stream) r.push(Buffer.of(byte));
  const got: string[] = [];
  for (let n = r.next(); n.kind === 'packet'; n = r.next()) got.push(n.packet.type);
  t.same(got, expected, 'one byte at a time');

  const capped = new TsguPacketReader(40);
  capped.push(stream);
  const first = capped.next();
  t.match(first, { kind: 'packet', packet: { type: 'handshake-request' } });
  t.match(capped.next(), { kind: 'error', code: 'packet-too-large' }, 'the 48-byte tunnel create is over a 40-byte cap');
  capped.push(R.FREERDP_TSGU_HANDSHAKE);
  t.match(capped.next(), { kind: 'error', code: 'packet-too-large' }, 'an error sticks');
  t.throws(() => new TsguPacketReader(4), RangeError);
});

t.test('RDG_OUT_DATA / RDG_IN_DATA heads FreeRDP 2.11 sent', async (t) => {
  const out = parseRdgRequestHead(Buffer.from(R.FREERDP_RDG_OUT_WEBSOCKET, 'latin1'));
  t.match(out, {
    kind: 'done',
    length: R.FREERDP_RDG_OUT_WEBSOCKET.length,
    value: {
      method: 'RDG_OUT_DATA', target: '/remoteDesktopGateway/', path: '/remoteDesktopGateway/', version: '1.1',
      host: '127.0.0.1', connectionId: '{a44b7348-a198-3b59-dd29-fae03345519e}', correlationId: null, authScheme: 'PAA',
      authorization: null, websocket: true, websocketKey: 'ZZIGAOZUBBAPOFV', websocketVersion: '13', contentLength: 0, chunked: false,
    },
  });
  t.match(parseRdgRequestHead(Buffer.from(R.FREERDP_RDG_IN_PROBE, 'latin1')), {
    kind: 'done', value: { method: 'RDG_IN_DATA', websocket: false, contentLength: 0, chunked: false, connectionId: '{817a058e-a657-df09-bf6a-2b60c584703b}' },
  });
  const chunkedHead = Buffer.concat([Buffer.from(R.FREERDP_RDG_IN_CHUNKED, 'latin1'), R.FREERDP_RDG_IN_FIRST_CHUNK]);
  const inData = parseRdgRequestHead(chunkedHead);
  t.match(inData, { kind: 'done', length: R.FREERDP_RDG_IN_CHUNKED.length, value: { chunked: true, contentLength: null } }, 'the body is not part of the head');
  // The key is hashed as sent; RFC 6455's own example checks the hashing.
  t.equal(websocketAccept('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
  t.equal(websocketAccept('ZZIGAOZUBBAPOFV').length, 28);

  const q = parseRdgRequestHead(Buffer.from('RDG_OUT_DATA /remoteDesktopGateway/?ConId=%7Babc%7D&CorId=c1&AuthS=PAA HTTP/1.1\r\nHost: gw\r\n\r\n', 'latin1'));
  t.match(q, { kind: 'done', value: { path: '/remoteDesktopGateway/', connectionId: '{abc}', correlationId: 'c1', authScheme: 'PAA' } }, 'MS-TSGU 2.2.3.3 query parameters');
});

t.test('malformed request heads: a code, never a throw', async (t) => {
  const head = (s: string): Buffer => Buffer.from(s, 'latin1');
  const line = 'RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\n';
  const cases: Array<[string, Buffer, string]> = [
    ['method prefix', head('RDG_OU'), 'more'],
    ['request line, no blank line yet', head(`${line}Host: x\r\n`), 'more'],
    ['GET', head('GET / HTTP/1.1\r\n\r\n'), 'not-rdg'],
    ['lower-case method', head('rdg_out_data / HTTP/1.1\r\n\r\n'), 'not-rdg'],
    ['no blank line within the cap', head(`${line}X-Pad: ${'a'.repeat(9000)}`), 'head-too-large'],
    ['absolute-form target', head('RDG_OUT_DATA http://gw/ HTTP/1.1\r\n\r\n'), 'bad-request-line'],
    ['two spaces', head('RDG_OUT_DATA  / HTTP/1.1\r\n\r\n'), 'bad-request-line'],
    ['HTTP/2.0', head('RDG_OUT_DATA / HTTP/2.0\r\n\r\n'), 'bad-version'],
    ['header without colon', head(`${line}Host\r\n\r\n`), 'bad-header'],
    ['folded header', head(`${line}X-A: b\r\n c\r\n\r\n`), 'bad-header'],
    ['space before colon', head(`${line}Host : x\r\n\r\n`), 'bad-header'],
    ['bare LF inside', head(`${line}Host: x\nEvil: y\r\n\r\n`), 'bad-header'],
    ['NUL in a value', head(`${line}Host: x\0\r\n\r\n`), 'bad-header'],
    ['too many headers', head(`${line}${'X-A: b\r\n'.repeat(65)}\r\n`), 'too-many-headers'],
    ['two different Content-Lengths', head(`${line}Content-Length: 0\r\nContent-Length: 5\r\n\r\n`), 'duplicate-header'],
    ['two connection ids', head(`${line}RDG-Connection-Id: {a}\r\nrdg-connection-id: {b}\r\n\r\n`), 'duplicate-header'],
    ['negative Content-Length', head(`${line}Content-Length: -1\r\n\r\n`), 'bad-content-length'],
    ['huge Content-Length', head(`${line}Content-Length: 9999999999999999\r\n\r\n`), 'bad-content-length'],
    ['gzip transfer coding', head(`${line}Transfer-Encoding: gzip, chunked\r\n\r\n`), 'unsupported-transfer-encoding'],
    ['chunked and Content-Length', head(`${line}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n`), 'content-length-and-chunked'],
    ['key with a space', head(`${line}Sec-WebSocket-Key: a b\r\n\r\n`), 'bad-websocket-key'],
    ['key of 65 characters', head(`${line}Sec-WebSocket-Key: ${'k'.repeat(65)}\r\n\r\n`), 'bad-websocket-key'],
  ];
  for (const [name, bytes, code] of cases) {
    const r = parseRdgRequestHead(bytes);
    t.equal(r.kind === 'error' ? r.code : r.kind, code, name);
  }
  t.match(parseRdgRequestHead(head(`${line}Content-Length: 0\r\ncontent-length: 0\r\n\r\n`)), { kind: 'done', value: { contentLength: 0 } }, 'a repeated identical value is harmless');
  t.match(parseRdgRequestHead(head(`${line}Upgrade: websocket\r\n\r\n`)), { kind: 'done', value: { websocket: false } }, 'Upgrade without Connection: upgrade');
  t.match(parseRdgRequestHead(head(`${line}X-Pad: ${'a'.repeat(100)}\r\n\r\n`), 64), { kind: 'error', code: 'head-too-large' }, 'a configured cap');
});

t.test('the legacy IN body: chunks', async (t) => {
  t.same(parseChunk(R.FREERDP_RDG_IN_FIRST_CHUNK), { kind: 'done', length: R.FREERDP_RDG_IN_FIRST_CHUNK.length, value: { data: R.FREERDP_TSGU_HANDSHAKE, last: false } });
  t.same(parseChunk(Buffer.from('0\r\n\r\n')), { kind: 'done', length: 5, value: { data: Buffer.alloc(0), last: true } });
  t.match(parseChunk(Buffer.from('0\r\nX-T: 1\r\n\r\nrest')), { kind: 'done', length: 13, value: { last: true } }, 'trailers skipped');
  t.match(parseChunk(Buffer.from('3;ext=1\r\nabc\r\n')), { kind: 'done', value: { data: Buffer.from('abc') } }, 'extensions ignored');
  const cases: Array<[string, Buffer, string]> = [
    ['size only', Buffer.from('E'), 'more'],
    ['size line', Buffer.from('E\r\n'), 'more'],
    ['part of the data', R.FREERDP_RDG_IN_FIRST_CHUNK.subarray(0, 10), 'more'],
    ['data without its CR LF', R.FREERDP_RDG_IN_FIRST_CHUNK.subarray(0, -2), 'more'],
    ['not hex', Buffer.from('G\r\n'), 'bad-chunk-size'],
    ['empty size', Buffer.from('\r\n'), 'bad-chunk-size'],
    ['not hex, before the line ends', Buffer.from('1x'), 'bad-chunk-size'],
    ['size over the cap, before the line ends', Buffer.from('fffff'), 'chunk-too-large'],
    ['nine hex digits', Buffer.from('000000001'), 'bad-chunk-size'],
    ['data followed by junk', Buffer.from('1\r\naXY'), 'bad-chunk-end'],
    ['data followed by one junk byte', Buffer.from('1\r\naX'), 'bad-chunk-end'],
    ['endless trailers', Buffer.from(`0\r\n${'a'.repeat(2000)}`), 'trailers-too-large'],
  ];
  for (const [name, bytes, code] of cases) {
    const r = parseChunk(bytes);
    t.equal(r.kind === 'error' ? r.code : r.kind, code, name);
  }
});

// ---------------------------------------------------------------------------------------------
// Properties

const u16 = fc.nat({ max: 0xffff });
const u32 = fc.nat({ max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const bytes = (maxLength = 40): fc.Arbitrary<Uint8Array> => fc.uint8Array({ maxLength });
const text = fc.string({ unit: 'binary', maxLength: 30 }).filter((s) => !s.endsWith('\0'));
const opt = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(a, { nil: undefined });
/** Drop absent optional fields, as decode leaves them out. */
const defined = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;

const packet: fc.Arbitrary<TsguPacket> = fc.oneof(
  fc.record({ type: fc.constant('handshake-request' as const), versionMajor: fc.nat({ max: 255 }), versionMinor: fc.nat({ max: 255 }), clientVersion: u16, extendedAuth: u16 }),
  fc.record({ type: fc.constant('handshake-response' as const), errorCode: u32, versionMajor: fc.nat({ max: 255 }), versionMinor: fc.nat({ max: 255 }), serverVersion: u16, extendedAuth: u16 }),
  fc.record({ type: fc.constant('extended-auth' as const), errorCode: u32, blob: bytes() }),
  fc.record({ type: fc.constant('tunnel-create' as const), capabilities: u32, reauthTunnelContext: opt(u64), paaCookie: opt(bytes()) }).map(defined),
  fc.record({
    type: fc.constant('tunnel-response' as const), serverVersion: u16, statusCode: u32, tunnelId: opt(u32), capabilities: opt(u32),
    sohRequest: opt(fc.record({ nonce: fc.uint8Array({ minLength: 16, maxLength: 16 }), serverCert: text })), consentMessage: opt(text),
  }).map(defined),
  fc.record({ type: fc.constant('tunnel-auth' as const), clientName: text, statementOfHealth: opt(bytes()) }).map(defined),
  fc.record({ type: fc.constant('tunnel-auth-response' as const), errorCode: u32, redirFlags: opt(u32), idleTimeout: opt(u32), sohResponse: opt(bytes()) }).map(defined),
  fc.record({
    type: fc.constant('channel-create' as const), resources: fc.array(text, { minLength: 1, maxLength: 50 }), altResources: fc.array(text, { maxLength: 3 }),
    port: u16, protocol: u16,
  }),
  fc.record({ type: fc.constant('channel-response' as const), errorCode: u32, channelId: opt(u32), udpPort: opt(u16), authnCookie: opt(bytes()) }).map(defined),
  fc.record({ type: fc.constant('data' as const), data: bytes(300) }),
  fc.record({ type: fc.constant('service-message' as const), message: text }),
  fc.record({ type: fc.constant('reauth' as const), reauthTunnelContext: u64 }),
  fc.constant({ type: 'keepalive' as const }),
  fc.record({ type: fc.constant('close-channel' as const), statusCode: u32 }),
  fc.record({ type: fc.constant('close-channel-response' as const), statusCode: u32 }),
  fc.record({ type: fc.constant('unknown' as const), packetType: fc.constantFrom(0, 0x0e, 0x0f, 0x12, 0xffff), body: bytes() }),
);

t.test('property: decode(encode(packet)) is the packet', async (t) => {
  fc.assert(
    fc.property(packet, (p) => {
      const b = encodePacket(p);
      const d = decodePacket(b);
      return d.kind === 'done' && d.length === b.length && canon(d.value) === canon(p);
    }),
    { seed: SEED, numRuns: 2000 },
  );
  t.pass();
});

t.test('property: any split of a packet stream gives the same packets', async (t) => {
  fc.assert(
    fc.property(fc.array(packet, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 10 }), (packets, cuts) => {
      const stream = Buffer.concat(packets.map(encodePacket));
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      const r = new TsguPacketReader();
      const got: TsguPacket[] = [];
      let prev = 0;
      for (const p of [...points, stream.length]) {
        r.push(stream.subarray(prev, p));
        prev = p;
        for (let n = r.next(); n.kind !== 'more'; n = r.next()) {
          if (n.kind === 'error') return false;
          got.push(n.packet);
        }
      }
      return r.pending === 0 && canon(got) === canon(packets);
    }),
    { seed: SEED, numRuns: 1000 },
  );
  t.pass();
});

t.test('property: any split of a chunked body gives the same bytes', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ minLength: 1, maxLength: 200 }), { maxLength: 8 }), fc.nat(), (chunks, cut) => {
      const body = Buffer.concat([...chunks.flatMap((c) => [Buffer.from(`${c.length.toString(16)}\r\n`), Buffer.from(c), Buffer.from('\r\n')]), Buffer.from('0\r\n\r\n')]);
      const at = cut % (body.length + 1);
      // Parse from a buffer that grows in two steps, as bytes arrive.
      let buf = Buffer.from(body.subarray(0, at));
      const out: Buffer[] = [];
      let done = false;
      for (const more of [body.subarray(at), Buffer.alloc(0)]) {
        buf = Buffer.concat([buf, more]);
        for (;;) {
          const c = parseChunk(buf);
          if (c.kind === 'error') return false;
          if (c.kind === 'more') break;
          if (c.value.last) done = true;
          else out.push(Buffer.from(c.value.data));
          buf = buf.subarray(c.length);
          if (done) break;
        }
      }
      return done && Buffer.concat(out).equals(Buffer.concat(chunks.map((c) => Buffer.from(c))));
    }),
    { seed: SEED, numRuns: 1000 },
  );
  t.pass();
});

t.test('property: junk never throws', async (t) => {
  const headerShaped = fc.tuple(fc.constantFrom(...Object.values(PacketType), 0, 0xe, 0xffff), fc.uint8Array({ maxLength: 200 })).map(([type, body]) => {
    const b = Buffer.alloc(8 + body.length);
    b.writeUInt16LE(type, 0);
    b.writeUInt32LE(b.length, 4);
    b.set(body, 8);
    return new Uint8Array(b);
  });
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), headerShaped), fc.nat({ max: 300 }), (b, cut) => {
      decodePacket(b);
      framePacket(b);
      parseChunk(b);
      const r = new TsguPacketReader(256);
      r.push(b.subarray(0, cut));
      r.push(b.subarray(cut));
      for (let i = 0, n = r.next(); n.kind === 'packet' && i < 100; i++, n = r.next());
      return true;
    }),
    { seed: SEED, numRuns: 5000 },
  );
  const headish = fc.tuple(
    fc.constantFrom('RDG_OUT_DATA ', 'RDG_IN_DATA ', 'RDG_', ''),
    fc.string({ unit: fc.constantFrom('a', 'Z', ' ', ':', '/', '\r', '\n', '\r\n', '\0', '\t', 'HTTP/1.1', 'Content-Length', 'Transfer-Encoding', 'chunked', '9', '\xff', '?', '%'), maxLength: 80 }),
  ).map(([m, rest]) => Buffer.from(m + rest, 'latin1'));
  fc.assert(
    fc.property(headish, (b) => {
      const r = parseRdgRequestHead(b, 256);
      return r.kind !== 'done' || r.length <= b.length;
    }),
    { seed: SEED, numRuns: 5000 },
  );
  t.pass();
});
