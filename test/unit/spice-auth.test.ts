/**
 * SPICE link stage pieces: the link message spice-html5 sends (built by hand from its source), the
 * one our own health probe sends, replies as spice-server builds them, the ticket decrypted the
 * way spice-server decrypts it, named bad inputs, and property tests (fixed seed).
 */
import t from 'tap';
import fc from 'fast-check';
import { constants, generateKeyPairSync, privateDecrypt } from 'node:crypto';
import { probeGreeting } from '../../protocols/probe.js';
import {
  SPICE_CHANNEL,
  SPICE_COMMON_CAP,
  SPICE_LINK_ERR,
  SPICE_LINK_REPLY_BYTES,
  SPICE_PUBKEY_BYTES,
  SPICE_TICKET_BYTES,
  type SpiceLinkMess,
  hasSpiceCap,
  parseSpiceAuthMechanism,
  parseSpiceLinkMess,
  parseSpiceLinkReply,
  parseSpiceLinkResult,
  spiceAuthMechanismMessage,
  spiceClientAuthBytes,
  spiceLinkMessMessage,
  spiceLinkReplyMessage,
  spiceLinkResultMessage,
  spiceTicket,
} from '../../protocols/spice-auth.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const SEED = 0x59ce;

// spice-html5 (spiceconn.js send_hdr) linking its main channel: common caps AUTH_SELECTION |
// MINI_HEADER (9), main channel caps AGENT_CONNECTED_TOKENS (bit 2 = 4), connection id 0.
const HTML5_MAIN_LINK = hex(`
  52454451 02000000 02000000 1a000000
  00000000 01 00 01000000 01000000 12000000
  09000000 04000000`);

const keys = generateKeyPairSync('rsa', { modulusLength: 1024 });
const SPKI = keys.publicKey.export({ type: 'spki', format: 'der' });

t.test('link messages: spice-html5, our own probe, and the builder agree', async (t) => {
  t.equal(SPKI.length, SPICE_PUBKEY_BYTES, 'a 1024-bit SPKI is exactly the 162-byte field');
  const html5 = parseSpiceLinkMess(HTML5_MAIN_LINK);
  const expected: SpiceLinkMess = { major: 2, minor: 2, connectionId: 0, channelType: SPICE_CHANNEL.MAIN, channelId: 0, commonCaps: [9], channelCaps: [4] };
  t.same(html5, { kind: 'done', value: expected, length: HTML5_MAIN_LINK.length });
  t.same(spiceLinkMessMessage(expected), HTML5_MAIN_LINK, 'the builder writes the same bytes');
  if (html5.kind === 'done') {
    t.ok(hasSpiceCap(html5.value.commonCaps, SPICE_COMMON_CAP.PROTOCOL_AUTH_SELECTION));
    t.ok(hasSpiceCap(html5.value.commonCaps, SPICE_COMMON_CAP.MINI_HEADER));
    t.notOk(hasSpiceCap(html5.value.commonCaps, SPICE_COMMON_CAP.AUTH_SASL));
    t.notOk(hasSpiceCap(html5.value.commonCaps, 40), 'a bit past the words is unset');
    t.equal(spiceClientAuthBytes(html5.value), 4 + SPICE_TICKET_BYTES, 'spice-html5 sends a mechanism, then the ticket');
  }
  const probe = parseSpiceLinkMess(probeGreeting('spice'));
  t.match(probe, { kind: 'done', value: { channelType: 1, commonCaps: [], channelCaps: [] }, length: 34 }, "protocols/probe.ts's greeting parses");
  if (probe.kind === 'done') t.equal(spiceClientAuthBytes(probe.value), SPICE_TICKET_BYTES, 'without AUTH_SELECTION, only the ticket');
});

t.test('replies as spice-server builds them', async (t) => {
  const reply = spiceLinkReplyMessage({ error: SPICE_LINK_ERR.OK, publicKey: SPKI, commonCaps: [0b1011], channelCaps: [0b1111] });
  t.equal(reply.readUInt32LE(12), SPICE_LINK_REPLY_BYTES + 8, 'header size covers the reply and two caps words');
  t.same(parseSpiceLinkReply(reply), {
    kind: 'done',
    value: { major: 2, minor: 2, error: 0, publicKey: SPKI, commonCaps: [0b1011], channelCaps: [0b1111] },
    length: reply.length,
  });
  // reds_send_link_error: header + a zeroed reply with only the error set, no caps.
  const refusal = Buffer.concat([hex('52454451 02000000 02000000 b2000000'), spiceLinkResultMessage(SPICE_LINK_ERR.VERSION_MISMATCH), Buffer.alloc(174)]);
  t.same(spiceLinkReplyMessage({ error: SPICE_LINK_ERR.VERSION_MISMATCH }), refusal, 'the error form');
  t.match(parseSpiceLinkReply(refusal), { kind: 'done', value: { error: 4, commonCaps: [], channelCaps: [] }, length: 194 });
});

t.test('the ticket decrypts the way spice-server decrypts it (RSA_PKCS1_OAEP_PADDING: SHA-1)', async (t) => {
  const ticket = spiceTicket('s3cret', SPKI);
  if (!ticket.ok) return t.fail(ticket.reason);
  t.equal(ticket.value.length, SPICE_TICKET_BYTES);
  const plain = privateDecrypt({ key: keys.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, ticket.value);
  t.same(plain, Buffer.from('s3cret\0'), 'the password and its NUL');
  const again = spiceTicket('s3cret', SPKI);
  t.not(again.ok && again.value.toString('hex'), ticket.value.toString('hex'), 'OAEP is randomised');
  const padded = Buffer.alloc(SPICE_PUBKEY_BYTES);
  SPKI.copy(padded);
  t.ok(spiceTicket('', padded).ok, 'an empty password is a ticket of one NUL');
  t.ok(spiceTicket('x'.repeat(60), SPKI).ok, '60 bytes, the most spice-server allows');
  t.match(spiceTicket('x'.repeat(61), SPKI), { ok: false, code: 'bad-password' });
  t.match(spiceTicket('a\0b', SPKI), { ok: false, code: 'bad-password' }, 'a NUL would end it early on the server');
  t.match(spiceTicket('pw', Buffer.alloc(SPICE_PUBKEY_BYTES)), { ok: false, code: 'bad-key' }, "an error reply's zeroed key");
  t.match(spiceTicket('pw', hex('3003020100')), { ok: false, code: 'bad-key' }, 'junk');
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  t.match(spiceTicket('pw', ec), { ok: false, code: 'bad-key' }, 'not RSA');
  const small = generateKeyPairSync('rsa', { modulusLength: 512 }).publicKey.export({ type: 'spki', format: 'der' });
  t.match(spiceTicket('pw', small), { ok: false, code: 'bad-key' }, 'RSA-512');
});

t.test('auth mechanism and link result', async (t) => {
  t.same(spiceAuthMechanismMessage(), hex('01000000'), 'SPICE_COMMON_CAP_AUTH_SPICE');
  t.same(parseSpiceAuthMechanism(hex('010000')), { kind: 'more', need: 4 });
  t.same(parseSpiceAuthMechanism(hex('01000000 ff')), { kind: 'done', value: 1, length: 4 });
  t.same(parseSpiceLinkResult(hex('07000000')), { kind: 'done', value: SPICE_LINK_ERR.PERMISSION_DENIED, length: 4 });
  t.same(parseSpiceLinkResult(hex('')), { kind: 'more', need: 4 });
});

interface Case {
  readonly name: string;
  readonly bytes: Buffer;
  readonly expect: unknown;
}

const header = (size: number, major = 2): Buffer => {
  const h = hex('52454451 00000000 02000000 00000000');
  h.writeUInt32LE(major, 4);
  h.writeUInt32LE(size, 12);
  return h;
};
const mess = (common: number, channel: number, offset: number, extra: Buffer = Buffer.alloc(0)): Buffer => {
  const b = Buffer.alloc(18);
  b.writeUInt8(1, 4);
  b.writeUInt32LE(common, 6);
  b.writeUInt32LE(channel, 10);
  b.writeUInt32LE(offset, 14);
  const body = Buffer.concat([b, extra]);
  return Buffer.concat([header(body.length), body]);
};

const cases: Case[] = [
  // too short
  { name: 'empty', bytes: hex(''), expect: { kind: 'more', need: 16 } },
  { name: 'magic only', bytes: hex('52454451'), expect: { kind: 'more', need: 16 } },
  { name: 'header only', bytes: HTML5_MAIN_LINK.subarray(0, 16), expect: { kind: 'more', need: 42 } },
  { name: 'one byte short', bytes: HTML5_MAIN_LINK.subarray(0, -1), expect: { kind: 'more', need: 42 } },
  // invalid
  { name: 'RFB banner', bytes: Buffer.from('RFB 003.008\n'), expect: { kind: 'error', code: 'bad-magic' } },
  { name: 'server magic typo', bytes: hex('52454452'), expect: { kind: 'error', code: 'bad-magic' } },
  { name: 'protocol 1.x', bytes: header(18, 1), expect: { kind: 'error', code: 'unsupported-version' } },
  { name: 'body smaller than SpiceLinkMess', bytes: header(17), expect: { kind: 'error', code: 'malformed' } },
  { name: 'body over 4 KiB', bytes: header(4097), expect: { kind: 'error', code: 'too-large' } },
  { name: '1025 common caps words', bytes: mess(1025, 0, 18), expect: { kind: 'error', code: 'too-large' } },
  { name: 'caps beyond the body', bytes: mess(1, 0, 18), expect: { kind: 'error', code: 'malformed' } },
  { name: 'caps inside the fixed part', bytes: mess(1, 0, 14, Buffer.alloc(4)), expect: { kind: 'error', code: 'malformed' } },
  // semi-valid: odd but as spice-server accepts it
  { name: 'caps offset past padding', bytes: mess(1, 0, 22, hex('00000000 08000000')), expect: { kind: 'done', value: { commonCaps: [8] }, length: 42 } },
  { name: 'no caps, nonsense offset (unused)', bytes: mess(0, 0, 0xffffffff), expect: { kind: 'done', value: { commonCaps: [], channelCaps: [] }, length: 34 } },
  // valid
  { name: 'spice-html5 main channel', bytes: HTML5_MAIN_LINK, expect: { kind: 'done', length: 42 } },
  // extra byte (the client's auth mechanism, sent early)
  { name: 'valid + extra byte', bytes: Buffer.concat([HTML5_MAIN_LINK, hex('01')]), expect: { kind: 'done', length: 42 } },
];

t.test('named fixtures: link message', async (t) => {
  for (const c of cases) t.match(parseSpiceLinkMess(c.bytes), c.expect, c.name);
});

t.test('named fixtures: link reply', async (t) => {
  const good = spiceLinkReplyMessage({ error: 0, publicKey: SPKI, commonCaps: [11], channelCaps: [] });
  t.same(parseSpiceLinkReply(good.subarray(0, 100)), { kind: 'more', need: good.length }, 'too short');
  t.match(parseSpiceLinkReply(header(177)), { kind: 'error', code: 'malformed' }, 'body smaller than SpiceLinkReply');
  t.match(parseSpiceLinkReply(HTML5_MAIN_LINK), { kind: 'error', code: 'malformed' }, 'a link message is not a reply');
  const badOffset = Buffer.from(good);
  badOffset.writeUInt32LE(20, 16 + 4 + 162 + 8);
  t.match(parseSpiceLinkReply(badOffset), { kind: 'error', code: 'malformed' }, 'caps offset inside the key');
  t.match(parseSpiceLinkReply(Buffer.concat([good, hex('00')])), { kind: 'done', length: good.length }, 'extra byte');
});

t.test('property: junk never throws; lengths are consistent', async (t) => {
  const junk = fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([header(b.length), Buffer.from(b)])),
    fc.tuple(fc.nat(), fc.nat(255)).map(([at, v]) => {
      const b = Buffer.from(HTML5_MAIN_LINK);
      b[at % b.length] = v;
      return b;
    }),
  );
  fc.assert(
    fc.property(junk, (bytes) => {
      for (const p of [parseSpiceLinkMess(bytes), parseSpiceLinkReply(bytes), parseSpiceAuthMechanism(bytes), parseSpiceLinkResult(bytes)]) {
        if (p.kind === 'done' && (p.length < 4 || p.length > bytes.length)) return false;
        if (p.kind === 'more' && p.need !== undefined && p.need <= bytes.length) return false;
      }
      return true;
    }),
    { seed: SEED, numRuns: 5000 },
  );
  t.pass();
});

t.test('property: link messages round-trip and are "more" until whole', async (t) => {
  const arb = fc.record({
    connectionId: fc.nat({ max: 0xffffffff }),
    channelType: fc.nat(255),
    channelId: fc.nat(255),
    commonCaps: fc.array(fc.nat({ max: 0xffffffff }), { maxLength: 4 }),
    channelCaps: fc.array(fc.nat({ max: 0xffffffff }), { maxLength: 4 }),
  });
  fc.assert(
    fc.property(arb, fc.nat(), (m, cut) => {
      const b = spiceLinkMessMessage(m);
      const p = parseSpiceLinkMess(b);
      if (p.kind !== 'done' || p.length !== b.length) return false;
      const { major, minor, ...rest } = p.value;
      return major === 2 && minor === 2 && JSON.stringify(rest) === JSON.stringify(m) && parseSpiceLinkMess(b.subarray(0, cut % b.length)).kind === 'more';
    }),
    { seed: SEED, numRuns: 1000 },
  );
  t.pass();
});
