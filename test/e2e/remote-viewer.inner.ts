/**
 * Run by remote-viewer.test.ts inside `unshare -n`. remote-viewer never exits on an error (it
 * opens a dialog), so the test reads its --spice-debug log and stops it itself.
 *
 * Two cases: `proxy=http://` (clear-text CONNECT) and `proxy=https://` (TLS to the gateway, then
 * CONNECT). For https, GLib/GnuTLS checks the gateway's certificate against the system store
 * (/etc/ssl/certs/ca-certificates.crt on Debian). The host's store is left alone: remote-viewer
 * runs in its own mount namespace (`unshare -m`) where a bundle holding only the test gateway's
 * CA is bind-mounted over that file, for that process tree only.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { startTestGateway } from '../helpers/gateway.js';
import { closedPort } from '../helpers/net.js';
import { startQemuSpice, startQemuSpiceWithPassword } from '../helpers/qemu.js';
import { startXvfb } from '../helpers/x11.js';
import { outsideNetns } from '../helpers/netns.js';

const SYSTEM_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

/**
 * `consolePassword`: QEMU asks for it and the directory holds it (or `stored`, a wrong one); the
 * .vv file and the user never see it.
 */
async function openVv(t: Test, proxy: 'http' | 'https', consolePassword?: string, stored = consolePassword): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-rv-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const spicePort = await closedPort();
  if (consolePassword === undefined) await startQemuSpice(t, spicePort);
  else await startQemuSpiceWithPassword(t, spicePort, consolePassword);
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('vm1', [{ protocol: 'spice', host: '127.0.0.1', port: spicePort, publishedPort: 5900, ...(stored ? { password: stored } : {}) }], ['alice']);

  // As a user: log in, download the .vv file (the portal's "Download .vv" link).
  const dispatcher = new Agent({ connect: { ca: gw.caCert, servername: 'localhost' } });
  t.teardown(() => dispatcher.close());
  const base = `https://127.0.0.1:${gw.port}`;
  const login = await request(`${base}/api/login`, {
    method: 'POST',
    dispatcher,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user: 'alice', password: 'alice-password-1' }),
  });
  const { token } = (await login.body.json()) as { token: string };
  const query = proxy === 'https' ? '?protocol=spice&proxy=https' : '?protocol=spice';
  const vv = await request(`${base}/api/desktops/vm1/console.vv${query}`, { dispatcher, headers: { authorization: `Bearer ${token}` } });
  t.equal(vv.statusCode, 200);
  t.equal(vv.headers['content-type'], 'application/x-virt-viewer');
  const text = await vv.body.text();
  t.match(text, new RegExp(`^proxy=${proxy}://127\\.0\\.0\\.1:${gw.port}$`, 'm'), `proxy=${proxy}:// points at the gateway`);
  t.match(text, /^host=[a-z0-9]{1,63}\.vm1$/m, 'host= carries the ticket in front of the VM name');
  t.notMatch(text, String(spicePort), 'the console port is not in the file');
  if (consolePassword !== undefined) t.notMatch(text, consolePassword, 'nor the console password');
  const file = join(dir, 'vm1.vv');
  writeFileSync(file, text);

  const x = await startXvfb(t);
  // https: a private mount namespace where the system bundle is the test gateway's CA alone.
  // `unshare -m` makes mounts private and execs (no fork), so rv is remote-viewer itself.
  let cmd = 'remote-viewer';
  let args = ['--spice-debug', file];
  if (proxy === 'https') {
    const bundle = join(dir, 'ca-certificates.crt');
    writeFileSync(bundle, gw.caCert);
    cmd = 'unshare';
    args = ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" "$1" && exec remote-viewer --spice-debug "$2"', bundle, SYSTEM_BUNDLE, file];
  }
  const rv = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DISPLAY: x.display, HOME: dir, XDG_RUNTIME_DIR: dir, NO_AT_BRIDGE: '1', G_MESSAGES_DEBUG: 'all' },
  });
  let log = '';
  rv.stdout.on('data', (d: Buffer) => (log += d.toString()));
  rv.stderr.on('data', (d: Buffer) => (log += d.toString()));
  t.teardown(async () => {
    if (rv.exitCode === null && rv.signalCode === null) {
      const exited = once(rv, 'exit');
      rv.kill('SIGKILL');
      await exited;
    }
  });

  if (stored !== consolePassword) {
    // The console refuses the stored password: remote-viewer reads the link result and says so.
    const end = Date.now() + 30_000;
    const denied = (): boolean => gw.logs.some((l) => l.event === 'console-handshake-failed' && l.vm === 'vm1' && l.result === 'console-auth');
    // spice-gtk: "link result: reply 7" (PERMISSION_DENIED), then virt-viewer's own words.
    const refused = /main channel: auth failure/;
    while (!(denied() && refused.test(log)) && rv.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    t.ok(denied(), 'the gateway logged the refused stored password for the admin');
    t.match(log, /main-\d+:\d+: link result: reply 7/, 'remote-viewer read the console\'s PERMISSION_DENIED');
    t.match(log, refused, 'and reports an authentication failure, not a hang', { log: log.slice(-2000) });
    t.notMatch(log, /main-\d+:\d+: channel up/, 'no channel came up');
    return;
  }
  // spice-gtk logs "<channel>: channel up" for each channel once its link is established.
  const channelsUp = (): Set<string> => new Set([...log.matchAll(/(main|display|inputs|cursor)-\d+:\d+: channel up/g)].map((m) => m[1]!));
  const end = Date.now() + 60_000;
  while (channelsUp().size < 4 && rv.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.same([...channelsUp()].sort(), ['cursor', 'display', 'inputs', 'main'], 'main, display, inputs and cursor channels are up', { log: log.slice(-4000) });

  rv.kill('SIGTERM');
  await once(rv, 'exit');
  const end2 = Date.now() + 10_000;
  while (gw.logs.filter((l) => l.event === 'tunnel' && l.vm === 'vm1').length < 4 && Date.now() < end2) await new Promise((r) => setTimeout(r, 50));
  const tunnels = gw.logs.filter((l) => l.event === 'tunnel' && l.vm === 'vm1');
  t.ok(tunnels.length >= 4, `one CONNECT tunnel per channel (${tunnels.length})`);
  const transport = proxy === 'https' ? 'connect-tls' : 'connect';
  t.ok(tunnels.every((l) => l.transport === transport && l.protocol === 'spice'), `all ${transport} (${proxy === 'https' ? 'TLS' : 'clear-text'} CONNECT), SPICE`, {
    transports: tunnels.map((l) => l.transport),
  });
}

t.test('remote-viewer opens the downloaded .vv and brings up SPICE channels through the gateway', { skip: outsideNetns }, async (t) => {
  await openVv(t, 'http');
});

t.test('remote-viewer with proxy=https:// trusts the gateway through the system store (private mount namespace)', {
  skip: outsideNetns || (existsSync(SYSTEM_BUNDLE) ? false : `${SYSTEM_BUNDLE} is missing (apt-get install ca-certificates)`),
}, async (t) => {
  await openVv(t, 'https');
});

t.test('remote-viewer reaches a SPICE console with a password it never learns: the gateway swaps each channel\'s ticket', { skip: outsideNetns }, async (t) => {
  await openVv(t, 'http', 'qemu-s3cret');
});

t.test('remote-viewer and a wrong stored SPICE password: the link is refused, the admin gets the log line, no channel comes up', { skip: outsideNetns }, async (t) => {
  await openVv(t, 'http', 'qemu-s3cret', 'not-the-one');
});
