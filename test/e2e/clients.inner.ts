/**
 * Run by clients.test.ts inside `unshare -n`. Real client programs against a real gateway.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, createWebSocketStream } from 'ws';
import jpeg from 'jpeg-js';
import { startTestGateway } from '../helpers/gateway.js';
import { freePort, socatListening, startBackend } from '../helpers/net.js';
import { apiClient, ok } from '../helpers/api.js';
import { until } from '../helpers/wait.js';
import { startRfbServer, patternPixel, TEST_PATTERN_BARS } from '../../gateway/demo/rfb.js';
import { rfbConnect, rfbRequestFrame, pixelAt } from '../helpers/rfb-client.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a program to completion with a deadline; stdin closed. */
function run(cmd: string, args: string[], timeoutMs = 20_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${cmd} did not finish in ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const BANNER = 'HELLO-FROM-THE-CONSOLE\n';

async function setup(t: Test, config: object = {}) {
  const gw = await startTestGateway(t, config);
  // A console that greets and closes: what the client prints proves the tunnel reached it.
  const greeter = await startBackend(t, (s) => s.end(BANNER));
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: greeter.port, publishedPort: 5900 }], ['alice']);
  const dir = mkdtempSync(join(tmpdir(), 'oneport-e2e-'));
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, gw.caCert);
  return { gw, greeter, caFile, dir };
}

t.test('curl through the gateway as an HTTPS proxy (password inside TLS)', async (t) => {
  const { gw, greeter, caFile } = await setup(t);
  const r = await run('curl', ['-sS', '-p', '--proxy-cacert', caFile, '-x', `https://localhost:${gw.port}`, '-U', 'alice:alice-password-1', 'telnet://desk:5900']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, BANNER, 'curl printed what the console sent');
  t.equal(greeter.accepted, 1);
});

t.test('curl through the gateway as an HTTPS proxy with a ticket and --proxy-insecure', async (t) => {
  const { gw } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const r = await run('curl', ['-sS', '-p', '--proxy-insecure', '-x', `https://localhost:${gw.port}`, '-U', `alice:${ticket}`, 'telnet://desk:5900']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, BANNER);
});

t.test("curl's clear-text CONNECT with a ticket; with a password it is refused", async (t) => {
  const { gw, greeter } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const ok = await run('curl', ['-sS', '-p', '-x', `http://127.0.0.1:${gw.port}`, '-U', `alice:${ticket}`, 'telnet://desk:5900']);
  t.equal(ok.code, 0, ok.stderr);
  t.equal(ok.stdout, BANNER);
  const refused = await run('curl', ['-sS', '-p', '-x', `http://127.0.0.1:${gw.port}`, '-U', 'alice:alice-password-1', 'telnet://desk:5900']);
  t.not(refused.code, 0, 'curl fails');
  t.match(refused.stderr, /403/, 'with the 403 from the gateway');
  t.equal(greeter.accepted, 1, 'only the ticket reached the console');
});

t.test('curl run twice with one ticket: the second run is refused once the first has ended', async (t) => {
  // No grace after the last connection closed (auth.ticketReuseAfterCloseMs 0; 2 s by default, for
  // an RDP client's prompt retry), so the rule shows without waiting.
  const { gw, greeter } = await setup(t, { auth: { ticketReuseAfterCloseMs: 0 } });
  const { ticket } = await gw.ticket('alice', 'desk');
  const args = ['-sS', '-p', '-x', `http://127.0.0.1:${gw.port}`, '-U', `alice:${ticket}`, 'telnet://desk:5900'];
  const first = await run('curl', args);
  t.equal(first.stdout, BANNER, 'the first run reaches the console');
  await until(() => gw.logs.some((l) => l.event === 'tunnel'), { timeoutMs: 5000 });
  const second = await run('curl', args);
  t.not(second.code, 0, 'the second run fails');
  t.match(second.stderr, /407/, 'with a 407: the ticket is spent');
  t.equal(greeter.accepted, 1, 'only the first run reached the console');
});

t.test("socat's PROXY client (HTTP/1.0, no Host) with proxyauth, and with the ticket in the host name", async (t) => {
  const { gw, greeter } = await setup(t);
  const first = await gw.ticket('alice', 'desk');
  const a = await run('socat', ['-T', '10', '-', `PROXY:127.0.0.1:desk:5900,proxyport=${gw.port},proxyauth=alice:${first.ticket}`]);
  t.equal(a.code, 0, a.stderr);
  t.equal(a.stdout, BANNER);
  const second = await gw.ticket('alice', 'desk');
  const b = await run('socat', ['-T', '10', '-', `PROXY:127.0.0.1:${second.ticket}.desk:5900,proxyport=${gw.port}`]);
  t.equal(b.code, 0, b.stderr);
  t.equal(b.stdout, BANNER);
  const replay = await run('socat', ['-T', '10', '-', `PROXY:127.0.0.1:desk:5900,proxyport=${gw.port},proxyauth=alice:${'b'.repeat(50)}`]);
  t.not(replay.code, 0, 'a forged ticket is refused');
  t.equal(greeter.accepted, 2);
});

t.test('a WebSocket client speaks raw RFB 3.8 through /tunnel/<vm>/vnc to the built-in desktop', async (t) => {
  const gw = await startTestGateway(t, {}, { demo: true });
  t.ok(gw.demoPassword, 'the demo user was created with a password');
  const api = apiClient(t, gw);
  const login = ok(await api('POST', '/api/login', { body: { user: 'demo', password: gw.demoPassword } }), 'login');
  const issued = ok(await api('POST', '/api/desktops/demo/tickets', { body: { protocol: 'vnc' }, token: login.token }), 'ticket');
  const ws = new WebSocket(`wss://localhost:${gw.port}${issued.websocket}`, ['binary'], { ca: gw.caCert });
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  t.equal(ws.protocol, 'binary', 'the binary subprotocol is echoed (noVNC)');
  const stream = createWebSocketStream(ws);
  stream.on('error', () => {});
  const session = await rfbConnect(stream);
  t.equal(session.version, 'RFB 003.008\n');
  const frame = await rfbRequestFrame(stream, session);
  t.equal(frame.length, session.width * session.height * 4, 'a full framebuffer update');
  const barWidth = session.width / TEST_PATTERN_BARS.length;
  for (let i = 0; i < TEST_PATTERN_BARS.length; i++) {
    const x = Math.floor(barWidth * i + barWidth / 2);
    t.same(pixelAt(frame, session, x, 10), [...patternPixel(x, 10, session.width, session.height)], `bar ${i}`);
  }
});

t.test('vncsnapshot (a VNC client nobody here wrote) takes a picture of the demo desktop through a CONNECT tunnel', async (t) => {
  const rfb = await startRfbServer({ host: '127.0.0.1', port: 0 });
  t.teardown(() => rfb.close());
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: rfb.port }], ['alice']);
  const { ticket } = await gw.ticket('alice', 'desk');
  // socat's CONNECT client gives vncsnapshot (which knows no proxies) a local port.
  const local = await freePort();
  const socat = spawn('socat', ['-d', '-d', `TCP-LISTEN:${local},bind=127.0.0.1,reuseaddr`, `PROXY:127.0.0.1:${ticket}.desk:5900,proxyport=${gw.port}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  t.teardown(() => socat.kill('SIGKILL'));
  await socatListening(socat.stderr);
  const dir = mkdtempSync(join(tmpdir(), 'oneport-snap-'));
  const out = join(dir, 'snap.jpg');
  const r = await run('vncsnapshot', ['-quiet', '-encodings', 'hextile raw', `127.0.0.1::${local}`, out], 30_000);
  t.equal(r.code, 0, r.stderr);
  // vncsnapshot stores RGB samples without a colour-space marker; jpeg-js would assume YCbCr.
  const img = jpeg.decode(readFileSync(out), { useTArray: true, colorTransform: false });
  t.equal(img.width, 640);
  t.equal(img.height, 480);
  const close = (a: readonly number[], b: readonly number[]): boolean => a.every((v, i) => Math.abs(v - (b[i] ?? 0)) <= 40);
  const barWidth = img.width / TEST_PATTERN_BARS.length;
  for (let i = 0; i < TEST_PATTERN_BARS.length; i++) {
    const x = Math.floor(barWidth * i + barWidth / 2);
    const y = 100;
    const o = (y * img.width + x) * 4;
    const got = [img.data[o] ?? 0, img.data[o + 1] ?? 0, img.data[o + 2] ?? 0];
    t.ok(close(got, TEST_PATTERN_BARS[i]!), `bar ${i}: got ${got}, want ${TEST_PATTERN_BARS[i]}`);
  }
  t.equal(rfb.accepted, 1, 'the console saw exactly one connection, through the gateway');
});
