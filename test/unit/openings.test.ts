/**
 * The openings of the console handshake (gateway/tunnel/openings.ts) as pure state machines: each
 * conversation is fed whole, then cut at every byte (TCP and WebSocket split messages anywhere),
 * and must end the same way. And one OpeningStream on a real loopback socket pair: its deadline.
 */
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { fuzz } from '../helpers/fuzz.js';
import net from 'node:net';
import { once } from 'node:events';
import { constants, generateKeyPairSync, privateDecrypt } from 'node:crypto';
import type { HandshakeFailure, Opening } from '../../gateway/tunnel/console-stream.js';
import { HANDSHAKE_FAILED, OpeningStream } from '../../gateway/tunnel/console-stream.js';
import { FIRST_BYTES_MAX, firstBytesCheck, spiceTicketOpening, vncNoneOpening } from '../../gateway/tunnel/openings.js';
import { spiceDetector } from '../../protocols/spice.js';
import { rdpDetector, rdpPreconnectionDetector } from '../../protocols/rdp.js';
import { protocolVersionMessage } from '../../protocols/vnc-auth.js';
import {
  SPICE_CHANNEL,
  SPICE_COMMON_CAP,
  SPICE_LINK_ERR,
  spiceAuthMechanismMessage,
  spiceLinkMessMessage,
  spiceLinkReplyMessage,
  spiceLinkResultMessage,
} from '../../protocols/spice-auth.js';

type Side = 'client' | 'console';
interface Run {
  toConsole: Buffer;
  toClient: Buffer;
  outcome: 'done' | HandshakeFailure | undefined;
}

/** Feed a conversation (each message cut into pieces of at most `piece` bytes) until an outcome. */
function run(make: () => Opening, conversation: ReadonlyArray<readonly [Side, Buffer]>, piece = Infinity): Run {
  const op = make();
  const toConsole: Buffer[] = [];
  const toClient: Buffer[] = [];
  let outcome: Run['outcome'];
  const apply = (s: ReturnType<Opening['start']>): void => {
    toConsole.push(...(s.toConsole ?? []));
    toClient.push(...(s.toClient ?? []));
    if (s.outcome !== undefined && outcome === undefined) outcome = s.outcome === 'done' ? 'done' : s.outcome.failure;
  };
  apply(op.start());
  for (const [side, bytes] of conversation) {
    for (let i = 0; i < bytes.length; i += piece) {
      const chunk = bytes.subarray(i, Math.min(bytes.length, i + piece));
      // Once done, bytes pass straight through (OpeningStream); after a failure nothing does.
      if (outcome === 'done') (side === 'client' ? toConsole : toClient).push(chunk);
      else if (outcome === undefined) apply(side === 'client' ? op.fromClient(chunk) : op.fromConsole(chunk));
    }
  }
  return { toConsole: Buffer.concat(toConsole), toClient: Buffer.concat(toClient), outcome };
}

/** The same outcome and bytes whole, and cut into pieces of every size from 1 byte up. */
function sameAnySplit(t: Test, name: string, make: () => Opening, conversation: ReadonlyArray<readonly [Side, Buffer]>, want: Run): void {
  const longest = Math.max(...conversation.map(([, b]) => b.length));
  for (const piece of [Infinity, ...Array.from({ length: Math.min(longest, 40) }, (_, i) => i + 1)]) {
    const got = run(make, conversation, piece);
    if (got.outcome !== want.outcome || !got.toConsole.equals(want.toConsole) || !got.toClient.equals(want.toClient)) {
      t.fail(`${name}: pieces of ${piece}`, { got: { ...got, toConsole: got.toConsole.toString('hex'), toClient: got.toClient.toString('hex') }, want: { ...want, toConsole: want.toConsole.toString('hex'), toClient: want.toClient.toString('hex') } });
      return;
    }
  }
  t.pass(`${name}: the same however it is split`);
}

const ok = (n: number): Buffer => Buffer.from([0, 0, 0, n]);

t.test('vncNoneOpening: None in the version the client asks for; what follows passes on', async (t) => {
  const banner = protocolVersionMessage('3.8');
  const clientInit = Buffer.from([1]);
  sameAnySplit(t, 'RFB 3.8', vncNoneOpening, [['client', Buffer.concat([protocolVersionMessage('3.8'), Buffer.from([1]), clientInit])]], {
    toClient: Buffer.concat([banner, Buffer.from([1, 1]), ok(0)]),
    toConsole: clientInit,
    outcome: 'done',
  });
  sameAnySplit(t, 'RFB 3.7', vncNoneOpening, [['client', Buffer.concat([protocolVersionMessage('3.7'), Buffer.from([1]), clientInit])]], {
    toClient: Buffer.concat([banner, Buffer.from([1, 1])]),
    toConsole: clientInit,
    outcome: 'done',
  });
  sameAnySplit(t, 'RFB 3.3', vncNoneOpening, [['client', Buffer.concat([protocolVersionMessage('3.3'), clientInit])]], {
    toClient: Buffer.concat([banner, ok(1)]),
    toConsole: clientInit,
    outcome: 'done',
  });
  sameAnySplit(t, 'RFB 3.889 (Apple) is 3.8', vncNoneOpening, [['client', Buffer.from('RFB 003.889\n\x01', 'latin1')]], {
    toClient: Buffer.concat([banner, Buffer.from([1, 1]), ok(0)]),
    toConsole: Buffer.alloc(0),
    outcome: 'done',
  });
  t.equal(run(vncNoneOpening, [['client', Buffer.concat([protocolVersionMessage('3.8'), Buffer.from([2])])]]).outcome, 'client-protocol', 'a client that insists on VNC Authentication');
  t.equal(run(vncNoneOpening, [['client', Buffer.from('GET / HTTP/1.1\r\n')]]).outcome, 'client-protocol', 'not RFB');
  t.equal(run(vncNoneOpening, [['client', Buffer.from('RFB 002.002\n')]]).outcome, 'client-protocol', 'below 3.3');
  t.equal(run(vncNoneOpening, [['client', Buffer.from('RFB 003.0')]]).outcome, undefined, 'half a version: waits');
});

t.test('firstBytesCheck: held until the detectors can say, then passed whole; bounded', async (t) => {
  const link = spiceLinkMessMessage({ connectionId: 0, channelType: 1, channelId: 0, commonCaps: [], channelCaps: [] });
  const spice = (): Opening => firstBytesCheck('SPICE', [spiceDetector]);
  sameAnySplit(t, 'REDQ', spice, [['client', link]], { toConsole: link, toClient: Buffer.alloc(0), outcome: 'done' });
  sameAnySplit(t, 'not REDQ', spice, [['client', Buffer.from('RED!')]], { toConsole: Buffer.alloc(0), toClient: Buffer.alloc(0), outcome: 'client-protocol' });
  const cr = Buffer.from('030000130ee00000000000010008000b000000', 'hex');
  const rdp = (): Opening => firstBytesCheck('RDP', [rdpDetector, rdpPreconnectionDetector]);
  sameAnySplit(t, 'an X.224 Connection Request', rdp, [['client', cr]], { toConsole: cr, toClient: Buffer.alloc(0), outcome: 'done' });
  const pcb = Buffer.alloc(16);
  pcb.writeUInt32LE(16, 0);
  pcb.writeUInt32LE(1, 8);
  sameAnySplit(t, 'a preconnection PDU first', rdp, [['client', Buffer.concat([pcb, cr])]], { toConsole: Buffer.concat([pcb, cr]), toClient: Buffer.alloc(0), outcome: 'done' });
  sameAnySplit(t, 'SSH on an RDP tunnel', rdp, [['client', Buffer.from('SSH-2.0-x\r\n')]], { toConsole: Buffer.alloc(0), toClient: Buffer.alloc(0), outcome: 'client-protocol' });
  const never = firstBytesCheck('X', [{ name: 'never', detect: () => ({ kind: 'more' }) }], 64);
  t.equal(never.fromClient(Buffer.alloc(63)).outcome, undefined);
  t.same(never.fromClient(Buffer.alloc(1)).outcome, { failure: 'client-protocol', detail: 'no X opening in the client\'s first 64 bytes' }, 'a detector that never decides is cut at the cap');
  t.equal(FIRST_BYTES_MAX, 4096);
  t.same(spice().fromConsole(Buffer.from('x')).toClient, [Buffer.from('x')], 'console bytes pass meanwhile');
});

t.test('spiceTicketOpening: the ticket becomes the stored password under the console\'s key', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  const caps = (1 << SPICE_COMMON_CAP.PROTOCOL_AUTH_SELECTION) | (1 << SPICE_COMMON_CAP.AUTH_SPICE);
  const mess = spiceLinkMessMessage({ connectionId: 7, channelType: SPICE_CHANNEL.DISPLAY, channelId: 0, commonCaps: [caps], channelCaps: [] });
  const reply = spiceLinkReplyMessage({ error: SPICE_LINK_ERR.OK, publicKey: spki, commonCaps: [caps] });
  const userTicket = Buffer.alloc(128, 0xaa);
  const after = Buffer.from('after');
  for (const piece of [Infinity, 1, 3, 17, 100]) {
    const got = run(() => spiceTicketOpening('s3cret'), [
      ['client', mess],
      ['console', reply],
      ['client', Buffer.concat([spiceAuthMechanismMessage(), userTicket])],
      ['console', Buffer.concat([spiceLinkResultMessage(SPICE_LINK_ERR.OK), after])],
    ], piece);
    t.equal(got.outcome, 'done', `pieces of ${piece}: done`);
    t.same(got.toClient, Buffer.concat([reply, spiceLinkResultMessage(0), after]), 'the client sees the reply and the result as the console sent them');
    const sent = got.toConsole;
    t.same(sent.subarray(0, mess.length), mess, 'the link message passes as it came');
    t.same(sent.subarray(mess.length, mess.length + 4), spiceAuthMechanismMessage(), 'then the mechanism');
    const ticket = sent.subarray(mess.length + 4);
    t.equal(ticket.length, 128);
    t.notSame(ticket, userTicket, 'not the client\'s ticket');
    t.equal(privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, ticket).toString('latin1'), 's3cret\0', 'but the stored password, NUL-terminated');
  }
  // Without auth selection: no mechanism either way.
  const legacyMess = spiceLinkMessMessage({ connectionId: 0, channelType: 1, channelId: 0, commonCaps: [1 << SPICE_COMMON_CAP.AUTH_SPICE], channelCaps: [] });
  const legacy = run(() => spiceTicketOpening('pw'), [['client', legacyMess], ['console', reply], ['client', userTicket], ['console', ok(0)]]);
  t.equal(legacy.toConsole.length, legacyMess.length + 128, 'an older client: the ticket alone');
  // A refused ticket reaches the client, and the opening ends as console-auth.
  const denied = run(() => spiceTicketOpening('wrong'), [['client', mess], ['console', reply], ['client', Buffer.concat([spiceAuthMechanismMessage(), userTicket])], ['console', spiceLinkResultMessage(SPICE_LINK_ERR.PERMISSION_DENIED)]]);
  t.same([denied.outcome, denied.toClient.subarray(-4)], ['console-auth', spiceLinkResultMessage(SPICE_LINK_ERR.PERMISSION_DENIED)], 'PERMISSION_DENIED: passed on, then console-auth');
  // The console refusing the link itself: nothing to swap.
  const refusedLink = spiceLinkReplyMessage({ error: SPICE_LINK_ERR.CHANNEL_NOT_AVAILABLE });
  t.same(run(() => spiceTicketOpening('pw'), [['client', mess], ['console', refusedLink]]).outcome, 'done', 'a link refused by the console passes as it is');
  t.equal(run(() => spiceTicketOpening('pw'), [['client', Buffer.from('GET / HTTP/1.1\r\n\r\n')]]).outcome, 'client-protocol', 'not REDQ');
  t.equal(run(() => spiceTicketOpening('pw'), [['client', mess], ['console', Buffer.from('HTTP/1.1 400 Bad\r\n\r\n')]]).outcome, 'console-protocol', 'a console that is not SPICE');
  const badKey = spiceLinkReplyMessage({ error: SPICE_LINK_ERR.OK, publicKey: Buffer.alloc(162, 1), commonCaps: [caps] });
  t.equal(run(() => spiceTicketOpening('pw'), [['client', mess], ['console', badKey], ['client', Buffer.concat([spiceAuthMechanismMessage(), userTicket])]]).outcome, 'console-protocol', 'a key that is no key');
  t.equal(run(() => spiceTicketOpening('pw'), [['client', mess], ['console', reply], ['client', Buffer.concat([spiceAuthMechanismMessage(SPICE_COMMON_CAP.AUTH_SASL), userTicket])]]).outcome, 'client-protocol', 'SASL cannot carry a stored password');
  t.equal(run(() => spiceTicketOpening('pw'), [['client', Buffer.concat([mess, Buffer.alloc(200)])]]).outcome, 'client-protocol', 'more than a ticket before the reply');
});

t.test('any bytes from either side, in any pieces: an opening never throws, ends at most once, and holds a bounded amount', async (t) => {
  const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  const reply = spiceLinkReplyMessage({ error: SPICE_LINK_ERR.OK, publicKey: spki, commonCaps: [0b11] });
  const mess = spiceLinkMessMessage({ connectionId: 0, channelType: 1, channelId: 0, commonCaps: [0b11], channelCaps: [] });
  const makers: Array<[string, () => Opening]> = [
    ['vnc', vncNoneOpening],
    ['spice', () => spiceTicketOpening('pw')],
    ['first-bytes', () => firstBytesCheck('RDP', [rdpDetector, rdpPreconnectionDetector])],
  ];
  // Real openings spliced with garbage, so the machines get past their first state too.
  const chunk = fc.oneof(fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)), fc.constantFrom(mess, reply, protocolVersionMessage('3.8'), Buffer.from([1]), spiceAuthMechanismMessage(), Buffer.alloc(128)));
  const conversation = fc.array(fc.tuple(fc.constantFrom<Side>('client', 'console'), chunk), { maxLength: 12 });
  for (const [name, make] of makers) {
    fc.assert(
      fc.property(conversation, (steps) => {
        const op = make();
        let outcomes = 0;
        let held = 0;
        for (const [side, bytes] of steps) {
          const step = side === 'client' ? op.fromClient(bytes) : op.fromConsole(bytes);
          if (step.outcome !== undefined) outcomes++;
          if (step.outcome !== undefined) break;
          held += bytes.length - [...(step.toClient ?? []), ...(step.toConsole ?? [])].reduce((a, b) => a + b.length, 0);
        }
        return outcomes <= 1 && held <= 2 * 4096 + 300;
      }),
      fuzz(300),
    );
    t.pass(`${name}: total and bounded`);
  }
});

t.test('OpeningStream on a real socket: the deadline blames the silent side and tells the pump', async (t) => {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const real = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  real.on('error', () => {});
  const [peer] = (await once(server, 'connection')) as [net.Socket];
  peer.on('error', () => {});
  peer.resume();
  const peerClosed = once(peer, 'close');
  t.teardown(() => peer.destroy());
  const ended: Array<{ failure?: string }> = [];
  const stream = new OpeningStream(real, firstBytesCheck('SPICE', [spiceDetector]), { timeoutMs: 200, onEnd: (r) => ended.push(r) });
  stream.on('error', () => {});
  const told = once(stream, HANDSHAKE_FAILED);
  stream.resume();
  t.same(await told, ['client-protocol'], 'a silent client: client-protocol');
  await once(stream, 'close');
  t.same(ended.map((e) => e.failure), ['client-protocol'], 'reported once');
  t.ok(real.destroyed, 'the console socket is closed');
  await peerClosed;
  t.pass('and the console sees it close');
});
