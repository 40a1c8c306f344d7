/**
 * The console-side handshakes against real servers: TigerVNC's Xvnc with a VNC password and QEMU's
 * SPICE server with a password (QEMU 7.2: `-object secret,id=spicepw,file=<f>` and
 * `-spice port=<n>,addr=127.0.0.1,password-secret=spicepw`). The gateway will authenticate to consoles itself (users never see
 * console passwords); these tests show the protocols/ pieces are accepted by the real thing, with
 * the right password, and refused with a wrong one. One more runs a real VNC client nobody here
 * wrote (vncsnapshot, RFB 3.3) through a minimal relay built from the same pieces: the client is
 * offered None and gets a picture of a desktop whose password it never had.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import type { Parse } from '../../protocols/parse.js';
import {
  type RfbVersion,
  chooseConsoleSecurity,
  noneSecurityOffer,
  noneSecurityResult,
  parseProtocolVersion,
  parseSecurityOffer,
  parseSecurityResult,
  parseVncAuthChallenge,
  protocolVersionMessage,
  securityChoiceMessage,
  vncAuthResponse,
} from '../../protocols/vnc-auth.js';
import {
  SPICE_CHANNEL,
  SPICE_COMMON_CAP,
  SPICE_LINK_ERR,
  parseSpiceLinkReply,
  parseSpiceLinkResult,
  spiceAuthMechanismMessage,
  spiceLinkMessMessage,
  spiceTicket,
} from '../../protocols/spice-auth.js';
import { missingCommands } from '../helpers/netns.js';
import { vncsnapshot } from '../helpers/rfb-client.js';
import { startQemuSpiceWithPassword } from '../helpers/qemu.js';
import { freePort } from '../helpers/net.js';
import { solidRoot, startXvncWithPassword } from '../helpers/x11.js';

const WAIT_MS = 10_000;

/** Reads whole protocol messages off a socket with the protocols/ parsers, under a deadline. */
class Wire {
  private buf: Buffer = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | undefined;
  private readonly onData = (d: Buffer): void => {
    this.buf = Buffer.concat([this.buf, d]);
    this.wake?.();
  };

  constructor(readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
  }

  async read<T>(parse: (b: Buffer) => Parse<T>, what: string): Promise<T> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const p = parse(this.buf);
      if (p.kind === 'done') {
        this.buf = this.buf.subarray(p.length);
        return p.value;
      }
      if (p.kind === 'error') throw new Error(`${what}: ${p.code}: ${p.reason}`);
      if (this.closed) throw new Error(`${what}: the peer closed after ${this.buf.length} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what}: nothing for ${WAIT_MS} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  /** Stop parsing; what was read but not parsed yet. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    return this.buf;
  }
}

async function dial(t: Test, port: number): Promise<Wire> {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  t.teardown(() => s.destroy());
  await once(s, 'connect', { signal: AbortSignal.timeout(WAIT_MS) });
  return new Wire(s);
}

/** Log in to an RFB console as the gateway will: speak `want`, answer VNC Authentication. */
async function rfbLogin(w: Wire, want: RfbVersion, password: string): Promise<{ accepted: boolean; reason?: string; type: number }> {
  const server = await w.read(parseProtocolVersion, 'ProtocolVersion');
  if (server.version !== '3.8') throw new Error(`Xvnc announced ${server.major}.${server.minor}`);
  w.socket.write(protocolVersionMessage(want));
  const offer = await w.read((b) => parseSecurityOffer(want, b), 'security offer');
  if (offer.kind === 'refused') throw new Error(`refused: ${offer.reason}`);
  const type = chooseConsoleSecurity(offer.types);
  if (type === undefined) throw new Error(`no usable type in ${offer.types.join(',')}`);
  if (want !== '3.3') w.socket.write(securityChoiceMessage(type));
  if (type === 2) {
    const challenge = await w.read(parseVncAuthChallenge, 'challenge');
    w.socket.write(vncAuthResponse(challenge, password));
  }
  const result = await w.read((b) => parseSecurityResult(want, b), 'SecurityResult');
  return { accepted: result.accepted, type, ...(result.reason === undefined ? {} : { reason: result.reason }) };
}

/** ClientInit (shared) and the ServerInit's framebuffer size: proof the session really opened. */
async function serverInitSize(w: Wire): Promise<[number, number]> {
  w.socket.write(Buffer.from([1]));
  const parse = (b: Buffer): Parse<[number, number]> => (b.length < 24 ? { kind: 'more' } : { kind: 'done', value: [b.readUInt16BE(0), b.readUInt16BE(2)], length: 24 });
  return w.read(parse, 'ServerInit');
}

async function xvncWithPassword(t: Test, password: string): Promise<{ port: number; display: string }> {
  const port = await freePort();
  const x = await startXvncWithPassword(t, port, password);
  return { port, display: x.display };
}

const noXvnc = missingCommands([['Xvnc', 'tigervnc-standalone-server'], ['vncpasswd', 'tigervnc-tools']]);

t.test('Xvnc with a VNC password accepts our VNC Authentication answer', { skip: noXvnc }, async (t) => {
  const password = 'k33p-0ut';
  const { port } = await xvncWithPassword(t, password);

  for (const version of ['3.8', '3.7', '3.3'] as const) {
    const w = await dial(t, port);
    const login = await rfbLogin(w, version, password);
    t.same(login, { accepted: true, type: 2 }, `RFB ${version}: right password accepted`);
    t.same(await serverInitSize(w), [320, 240], `RFB ${version}: ServerInit follows`);
    w.socket.destroy();
  }

  const wrong = await dial(t, port);
  const refused = await rfbLogin(wrong, '3.8', 'k33p-0uT');
  t.equal(refused.accepted, false, 'RFB 3.8: wrong password refused');
  t.ok(refused.reason, `with a reason: ${JSON.stringify(refused.reason)}`);
});

t.test(
  'vncsnapshot, offered None by a relay that knows the password, gets a picture of a password-protected Xvnc',
  { skip: noXvnc || missingCommands([['vncsnapshot', 'vncsnapshot'], ['xsetroot', 'x11-xserver-utils']]) },
  async (t) => {
    const password = 'relay-me';
    const { port: consolePort, display } = await xvncWithPassword(t, password);
    await solidRoot(display, [0x20, 0xc0, 0x40]);

    // The relay: the gateway's future VNC leg in miniature, without tickets or routing.
    const relay = net.createServer((client) => {
      client.on('error', () => {});
      void (async () => {
        const c = new Wire(client);
        client.write(protocolVersionMessage('3.8'));
        const asked = await c.read(parseProtocolVersion, 'client ProtocolVersion');
        const version = asked.version;
        const s = await dial(t, consolePort);
        const login = await rfbLogin(s, '3.8', password);
        if (!login.accepted) throw new Error('console refused the relay');
        client.write(noneSecurityOffer(version));
        if (version !== '3.3') await c.read((b) => (b.length < 1 ? { kind: 'more' } : b[0] === 1 ? { kind: 'done', value: 1, length: 1 } : { kind: 'error', code: 'x', reason: 'not None' }), 'choice');
        client.write(noneSecurityResult(version));
        // From ClientInit on, the two legs speak the same bytes.
        s.socket.write(c.detach());
        client.write(s.detach());
        client.pipe(s.socket).pipe(client);
        t.comment(`client spoke RFB ${version}`);
      })().catch((e: Error) => {
        t.comment(`relay: ${e.message}`);
        client.destroy();
      });
    });
    relay.listen(0, '127.0.0.1');
    await once(relay, 'listening');
    t.teardown(() => relay.close());
    const relayPort = (relay.address() as net.AddressInfo).port;

    const shot = await vncsnapshot(t, relayPort);
    t.equal(shot.code, 0, `vncsnapshot exited 0 (${shot.log.trim()})`);
    t.same([shot.width, shot.height], [320, 240], 'a picture of the whole desktop');
    const got = shot.pixel(160, 120);
    t.ok(got.every((v, i) => Math.abs(v - ([0x20, 0xc0, 0x40][i] ?? 0)) <= 40), `in the root window's colour (got ${got.join(',')})`);
  },
);

/** Link one SPICE channel as the gateway will, with `password`; the link result. */
async function spiceLink(t: Test, port: number, password: string, authSelection: boolean): Promise<{ result: number; wire: Wire }> {
  const w = await dial(t, port);
  const caps = (1 << SPICE_COMMON_CAP.AUTH_SPICE) | (1 << SPICE_COMMON_CAP.MINI_HEADER) | (authSelection ? 1 << SPICE_COMMON_CAP.PROTOCOL_AUTH_SELECTION : 0);
  w.socket.write(spiceLinkMessMessage({ connectionId: 0, channelType: SPICE_CHANNEL.MAIN, channelId: 0, commonCaps: [caps], channelCaps: [] }));
  const reply = await w.read(parseSpiceLinkReply, 'SpiceLinkReply');
  if (reply.error !== SPICE_LINK_ERR.OK) throw new Error(`link error ${reply.error}`);
  const ticket = spiceTicket(password, reply.publicKey);
  if (!ticket.ok) throw new Error(`${ticket.code}: ${ticket.reason}`);
  if (authSelection) w.socket.write(spiceAuthMechanismMessage());
  w.socket.write(ticket.value);
  return { result: await w.read(parseSpiceLinkResult, 'link result'), wire: w };
}

t.test('QEMU SPICE with a password accepts our ticket and refuses a wrong one', { skip: missingCommands([['qemu-system-x86_64', 'qemu-system-x86']]) }, async (t) => {
  const password = 'c0ns0le-only';
  const port = await freePort();
  await startQemuSpiceWithPassword(t, port, password);

  const good = await spiceLink(t, port, password, true);
  t.equal(good.result, SPICE_LINK_ERR.OK, 'right password, with auth selection (as spice-html5 links): OK');
  // The main channel then starts talking: SPICE_MSG_MAIN_INIT (103) under a mini header.
  const first = await good.wire.read((b): Parse<number> => (b.length < 6 ? { kind: 'more' } : { kind: 'done', value: b.readUInt16LE(0), length: 6 }), 'first message');
  t.equal(first, 103, 'and the main channel sends MAIN_INIT');
  good.wire.socket.destroy();

  const legacy = await spiceLink(t, port, password, false);
  t.equal(legacy.result, SPICE_LINK_ERR.OK, 'right password, ticket without an auth mechanism (older clients): OK');
  legacy.wire.socket.destroy();

  const bad = await spiceLink(t, port, 'c0ns0le-onlY', true);
  t.equal(bad.result, SPICE_LINK_ERR.PERMISSION_DENIED, 'wrong password: permission denied');
});
