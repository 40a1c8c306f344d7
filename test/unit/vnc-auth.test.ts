/**
 * RFB security handshake pieces: DES vectors that do not come from this code (the FIPS 46 worked
 * example, and TigerVNC's `vncpasswd -f`, which runs the same bit-reversed DES over the password
 * with a fixed key), named fixtures per protocol version, and property tests (fixed seed): junk
 * never throws, and a message cut anywhere is "more" until it is whole.
 */
import t from 'tap';
import fc from 'fast-check';
import {
  type RfbVersion,
  RFB_REASON_MAX_BYTES,
  chooseConsoleSecurity,
  handshakeFor,
  noneSecurityOffer,
  noneSecurityResult,
  parseProtocolVersion,
  parseSecurityChoice,
  parseSecurityOffer,
  parseSecurityResult,
  parseVncAuthChallenge,
  protocolVersionMessage,
  securityChoiceMessage,
  securityRefusal,
  vncAuthResponse,
} from '../../protocols/vnc-auth.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const VERSIONS: RfbVersion[] = ['3.3', '3.7', '3.8'];
const SEED = 0x5ecb;

t.test('VNC Authentication: DES with bit-reversed key bytes', async (t) => {
  // FIPS 46 / the classic worked example: key 133457799BBCDFF1, 0123456789ABCDEF -> 85E813540F0AB405.
  // The password whose bytes, bit-reversed, give that key:
  const password = hex('c82cea9ed93dfb8f');
  const block = hex('0123456789abcdef');
  const r = vncAuthResponse(Buffer.concat([block, block]), password);
  t.equal(r.toString('hex'), '85e813540f0ab405'.repeat(2), 'ECB: both 8-byte halves encrypted alike');

  // `echo -n password | vncpasswd -f` prints dbd83cfd727a1458: TigerVNC obfuscates a stored
  // password by encrypting it with the fixed key 23 82 107 6 35 78 88 7, through the same d3des.
  const fixedKey = Buffer.from([23, 82, 107, 6, 35, 78, 88, 7]);
  const stored = vncAuthResponse(Buffer.from('passwordpassword'), fixedKey);
  t.equal(stored.subarray(0, 8).toString('hex'), 'dbd83cfd727a1458', "matches TigerVNC's vncpasswd");

  const challenge = hex('00112233445566778899aabbccddeeff');
  t.same(vncAuthResponse(challenge, 'secret12-and-more'), vncAuthResponse(challenge, 'secret12'), 'only the first 8 bytes count');
  t.same(vncAuthResponse(challenge, 'abc'), vncAuthResponse(challenge, Buffer.from('abc\0\0\0\0\0')), 'short passwords are zero-padded');
  t.same(vncAuthResponse(challenge, 'é'), vncAuthResponse(challenge, Buffer.from([0xc3, 0xa9])), 'strings are UTF-8');
  t.not(vncAuthResponse(challenge, 'secret12').toString('hex'), vncAuthResponse(challenge, 'secret13').toString('hex'));
  t.throws(() => vncAuthResponse(Buffer.alloc(15), 'x'), RangeError);
});

t.test('ProtocolVersion: what each announced version means', async (t) => {
  const table: Array<[string, RfbVersion | undefined]> = [
    ['RFB 003.003\n', '3.3'],
    ['RFB 003.005\n', '3.3'], // RFC 6143 7.1.1: unknown minors are 3.3
    ['RFB 003.006\n', '3.3'], // UltraVNC
    ['RFB 003.007\n', '3.7'],
    ['RFB 003.008\n', '3.8'],
    ['RFB 003.889\n', '3.8'], // Apple Remote Desktop
    ['RFB 004.001\n', '3.8'], // RealVNC 4
    ['RFB 005.000\n', '3.8'],
    ['RFB 002.002\n', undefined],
  ];
  for (const [text, version] of table) {
    const p = parseProtocolVersion(Buffer.from(text, 'latin1'));
    if (version === undefined) t.match(p, { kind: 'error', code: 'unsupported-version' }, text.trim());
    else t.match(p, { kind: 'done', value: { version }, length: 12 }, text.trim());
  }
  t.same(parseProtocolVersion(Buffer.from('RFB 003.0')), { kind: 'more', need: 12 }, 'too short');
  t.match(parseProtocolVersion(Buffer.from('RFB 003.008\r')), { kind: 'error', code: 'malformed' }, 'invalid');
  t.match(parseProtocolVersion(Buffer.from('RFB 003.008\nX')), { kind: 'done', length: 12 }, 'extra byte left alone');
  t.equal(handshakeFor(3, 8), '3.8');
  for (const v of VERSIONS) t.same(parseProtocolVersion(protocolVersionMessage(v)), { kind: 'done', value: { major: 3, minor: Number(v.slice(2)), version: v }, length: 12 });
});

interface Case {
  readonly name: string;
  readonly version: RfbVersion;
  readonly bytes: Buffer;
  readonly expect: unknown;
}

const reason = (s: string): Buffer => Buffer.concat([hex((s.length >>> 0).toString(16).padStart(8, '0')), Buffer.from(s)]);
const offerCases: Case[] = [
  // too short
  { name: '3.3: empty', version: '3.3', bytes: hex(''), expect: { kind: 'more', need: 4 } },
  { name: '3.3: three bytes', version: '3.3', bytes: hex('000000'), expect: { kind: 'more', need: 4 } },
  { name: '3.8: list cut short', version: '3.8', bytes: hex('02 02'), expect: { kind: 'more', need: 3 } },
  { name: '3.8: refusal cut in its reason', version: '3.8', bytes: hex('00 00000005 6e6f'), expect: { kind: 'more', need: 10 } },
  // invalid
  { name: '3.3: type 16 (3.3 knows only 0, 1, 2)', version: '3.3', bytes: hex('00000010'), expect: { kind: 'error', code: 'malformed' } },
  { name: '3.8: a reason of 1 MiB', version: '3.8', bytes: hex('00 00100000'), expect: { kind: 'error', code: 'too-large' } },
  { name: '3.3: a reason over the cap', version: '3.3', bytes: hex('00000000 00000401'), expect: { kind: 'error', code: 'too-large' } },
  // semi-valid: a refusal is a valid message that ends the handshake
  { name: '3.8: refused with a reason', version: '3.8', bytes: Buffer.concat([hex('00'), reason('Too many security failures')]), expect: { kind: 'done', value: { kind: 'refused', reason: 'Too many security failures' }, length: 31 } },
  { name: '3.3: refused, reason with a NUL (QEMU style)', version: '3.3', bytes: Buffer.concat([hex('00000000'), reason('nope\0')]), expect: { kind: 'done', value: { kind: 'refused', reason: 'nope' }, length: 13 } },
  // valid
  { name: '3.3: VNC Authentication', version: '3.3', bytes: hex('00000002'), expect: { kind: 'done', value: { kind: 'types', types: [2] }, length: 4 } },
  { name: '3.7: None', version: '3.7', bytes: hex('01 01'), expect: { kind: 'done', value: { kind: 'types', types: [1] }, length: 2 } },
  { name: '3.8: TigerVNC VeNCrypt, TLS, VncAuth', version: '3.8', bytes: hex('03 13 12 02'), expect: { kind: 'done', value: { kind: 'types', types: [19, 18, 2] }, length: 4 } },
  // extra byte (the challenge that follows)
  { name: '3.8: list + extra byte', version: '3.8', bytes: hex('01 02 ff'), expect: { kind: 'done', value: { kind: 'types', types: [2] }, length: 2 } },
  { name: '3.3: type + extra byte', version: '3.3', bytes: hex('00000002 ff'), expect: { kind: 'done', value: { kind: 'types', types: [2] }, length: 4 } },
];

const resultCases: Case[] = [
  { name: '3.8: too short', version: '3.8', bytes: hex('0000'), expect: { kind: 'more', need: 4 } },
  { name: '3.8: failure cut in its reason', version: '3.8', bytes: hex('00000001 0000'), expect: { kind: 'more', need: 8 } },
  { name: '3.8: failure with an oversized reason', version: '3.8', bytes: hex('00000001 ffffffff'), expect: { kind: 'error', code: 'too-large' } },
  { name: '3.8: OK', version: '3.8', bytes: hex('00000000'), expect: { kind: 'done', value: { accepted: true, status: 0 }, length: 4 } },
  { name: '3.8: OK + extra byte (ServerInit)', version: '3.8', bytes: hex('00000000 01'), expect: { kind: 'done', value: { accepted: true, status: 0 }, length: 4 } },
  {
    name: '3.8: failed with QEMU\'s reason',
    version: '3.8',
    bytes: Buffer.concat([hex('00000001'), reason('Authentication failed\0')]),
    expect: { kind: 'done', value: { accepted: false, status: 1, reason: 'Authentication failed' }, length: 30 },
  },
  { name: '3.7: failed, no reason', version: '3.7', bytes: hex('00000001 00000015'), expect: { kind: 'done', value: { accepted: false, status: 1 }, length: 4 } },
  { name: '3.3: too many attempts', version: '3.3', bytes: hex('00000002'), expect: { kind: 'done', value: { accepted: false, status: 2 }, length: 4 } },
];

t.test('named fixtures: security offer', async (t) => {
  for (const c of offerCases) t.match(parseSecurityOffer(c.version, c.bytes), c.expect, c.name);
});

t.test('named fixtures: security result', async (t) => {
  for (const c of resultCases) t.match(parseSecurityResult(c.version, c.bytes), c.expect, c.name);
});

t.test('challenge and choice', async (t) => {
  t.same(parseVncAuthChallenge(Buffer.alloc(15)), { kind: 'more', need: 16 });
  const c = parseVncAuthChallenge(Buffer.alloc(17, 7));
  t.match(c, { kind: 'done', length: 16 });
  if (c.kind === 'done') t.equal(c.value.length, 16);
  t.same(parseSecurityChoice(Buffer.alloc(0)), { kind: 'more', need: 1 });
  t.same(parseSecurityChoice(hex('01ff')), { kind: 'done', value: 1, length: 1 });
  t.same(securityChoiceMessage(2), hex('02'));
  t.equal(chooseConsoleSecurity([19, 2, 1]), 1, 'None when the console allows it');
  t.equal(chooseConsoleSecurity([19, 18, 2]), 2, 'VNC Authentication otherwise');
  t.equal(chooseConsoleSecurity([19, 18]), undefined, 'nothing the gateway can answer');
});

t.test('what the gateway sends a client, per version (RFC 6143 7.1.2, 7.1.3; QEMU ui/vnc.c)', async (t) => {
  t.same(noneSecurityOffer('3.3'), hex('00000001'), '3.3: the server names the type');
  t.same(noneSecurityOffer('3.7'), hex('01 01'), '3.7: a list of one');
  t.same(noneSecurityOffer('3.8'), hex('01 01'), '3.8: a list of one');
  t.same(noneSecurityResult('3.3'), hex(''), '3.3: no SecurityResult after None');
  t.same(noneSecurityResult('3.7'), hex(''), '3.7: no SecurityResult after None');
  t.same(noneSecurityResult('3.8'), hex('00000000'), '3.8: SecurityResult OK after None');
  for (const v of VERSIONS) {
    // What we send parses back as the client would read it.
    t.match(parseSecurityOffer(v, noneSecurityOffer(v)), { kind: 'done', value: { kind: 'types', types: [1] } }, `${v}: offer reads back`);
    const refusal = securityRefusal(v, 'the console is down');
    t.same(parseSecurityOffer(v, refusal), { kind: 'done', value: { kind: 'refused', reason: 'the console is down' }, length: refusal.length }, `${v}: refusal reads back`);
  }
  const long = securityRefusal('3.8', 'é'.repeat(RFB_REASON_MAX_BYTES));
  t.equal(long.readUInt32BE(1), RFB_REASON_MAX_BYTES, 'a long reason is cut to the cap, on a character boundary');
  t.match(parseSecurityOffer('3.8', long), { kind: 'done', value: { kind: 'refused' } });
});

t.test('property: junk never throws; results are well-formed', async (t) => {
  fc.assert(
    fc.property(fc.constantFrom(...VERSIONS), fc.uint8Array({ maxLength: 64 }), (v, bytes) => {
      for (const p of [parseSecurityOffer(v, bytes), parseSecurityResult(v, bytes), parseProtocolVersion(bytes), parseVncAuthChallenge(bytes), parseSecurityChoice(bytes)]) {
        if (p.kind === 'done' && (p.length < 1 || p.length > bytes.length)) return false;
        if (p.kind === 'more' && p.need !== undefined && p.need <= bytes.length) return false;
      }
      return true;
    }),
    { seed: SEED, numRuns: 5000 },
  );
  t.pass();
});

t.test('property: a message cut anywhere is "more" until it is whole', async (t) => {
  const whole = fc.oneof(
    fc.tuple(fc.constantFrom(...VERSIONS), fc.string({ maxLength: 80 })).map(([v, r]) => [v, securityRefusal(v, r)] as const),
    fc.tuple(fc.constantFrom<RfbVersion>('3.7', '3.8'), fc.uint8Array({ minLength: 1, maxLength: 255 })).map(([v, types]) => [v, Buffer.concat([Buffer.from([types.length]), types])] as const),
  );
  fc.assert(
    fc.property(whole, fc.nat(), ([v, msg], cut) => {
      const at = cut % msg.length;
      const part = parseSecurityOffer(v, msg.subarray(0, at));
      const all = parseSecurityOffer(v, msg);
      return part.kind === 'more' && all.kind === 'done' && all.length === msg.length;
    }),
    { seed: SEED, numRuns: 2000 },
  );
  t.pass();
});
