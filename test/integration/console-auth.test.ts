/**
 * The console-side handshakes against real servers: TigerVNC's Xvnc with a VNC password and QEMU's
 * SPICE server with a password. The gateway will authenticate to consoles itself (users never see
 * console passwords); these tests show the protocols/ pieces are accepted by the real thing, with
 * the right password, and refused with a wrong one. One more runs a real VNC client nobody here
 * wrote (vncsnapshot, RFB 3.3) through a minimal relay built from the same pieces: the client is
 * offered None and gets a picture of a desktop whose password it never had.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import jpeg from 'jpeg-js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
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
import { missingCommands } from '../helpers/netns.js';
import { freePort } from '../helpers/redis.js';
import { solidRoot, startXvnc } from '../helpers/x11.js';

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
  const dir = mkdtempSync(join(tmpdir(), 'oneport-vncauth-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = spawnSync('vncpasswd', ['-f'], { input: password });
  if (made.status !== 0) throw new Error(`vncpasswd: ${made.stderr.toString()}`);
  const file = join(dir, 'passwd');
  writeFileSync(file, made.stdout, { mode: 0o600 });
  const port = await freePort();
  const x = await startXvnc(t, port, '320x240', ['-SecurityTypes', 'VncAuth', '-rfbauth', file]);
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
    await solidRoot(display, '#20c040');

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

    const dir = mkdtempSync(join(tmpdir(), 'oneport-snap-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const out = join(dir, 'shot.jpg');
    // vncsnapshot takes a display number: port 5900 + N. A port below 5900 is written as -N.
    const snap = spawn('vncsnapshot', ['-quiet', '-encodings', 'hextile raw', `127.0.0.1::${relayPort}`, out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    snap.stdout.on('data', (d: Buffer) => (log += d.toString()));
    snap.stderr.on('data', (d: Buffer) => (log += d.toString()));
    t.teardown(() => snap.kill('SIGKILL'));
    const [code] = (await once(snap, 'exit', { signal: AbortSignal.timeout(20_000) })) as [number | null];
    t.equal(code, 0, `vncsnapshot exited 0 (${log.trim()})`);
    // vncsnapshot stores RGB samples without a colour-space marker; jpeg-js would assume YCbCr.
    const img = jpeg.decode(readFileSync(out), { useTArray: true, colorTransform: false });
    t.same([img.width, img.height], [320, 240], 'a picture of the whole desktop');
    const o = (120 * img.width + 160) * 4;
    const got = [img.data[o] ?? 0, img.data[o + 1] ?? 0, img.data[o + 2] ?? 0];
    t.ok(got.every((v, i) => Math.abs(v - ([0x20, 0xc0, 0x40][i] ?? 0)) <= 40), `in the root window's colour (got ${got.join(',')})`);
  },
);
