/**
 * Run by rdp.test.ts inside `unshare -n`: xrdp with its own configuration in a temporary folder
 * (no sesman: its login screen is enough), the gateway in-process, and xfreerdp as a user runs it
 * with the command line the portal shows.
 */
import { probeConsole } from '../../gateway/cluster/cluster.js';
import t, { type Test } from 'tap';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiClient, ok } from '../helpers/api.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { closedPort, waitForPort } from '../helpers/net.js';
import { testPki } from '../helpers/certs.js';
import { startXvfb } from '../helpers/x11.js';
import { outsideNetns } from '../helpers/netns.js';
import { until } from '../helpers/wait.js';

interface Run {
  /** null when it had to be killed at the deadline. */
  code: number | null;
  out: string;
}

function kill(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  const exited = once(p, 'exit').then(() => undefined);
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
  return exited.finally(() => clearTimeout(timer));
}

/** xrdp on 127.0.0.1:<port>, TLS with a certificate made for this run, logging into `dir`. */
async function startXrdp(t: Test, dir: string): Promise<{ port: number; log: () => string }> {
  const port = await closedPort();
  const { server } = testPki();
  writeFileSync(join(dir, 'cert.pem'), server.cert);
  writeFileSync(join(dir, 'key.pem'), server.key, { mode: 0o600 });
  const logFile = join(dir, 'xrdp.log');
  writeFileSync(
    join(dir, 'xrdp.ini'),
    [
      '[Globals]',
      'ini_version=1',
      'fork=false',
      `port=tcp://127.0.0.1:${port}`,
      'security_layer=tls',
      'crypt_level=none',
      `certificate=${join(dir, 'cert.pem')}`,
      `key_file=${join(dir, 'key.pem')}`,
      'ssl_protocols=TLSv1.2, TLSv1.3',
      'allow_channels=true',
      'max_bpp=24',
      '[Logging]',
      `LogFile=${logFile}`,
      'LogLevel=INFO',
      'EnableSyslog=false',
      'EnableConsole=false',
      '[Channels]',
      '',
    ].join('\n'),
  );
  const proc = spawn('xrdp', ['--nodaemon', '--config', join(dir, 'xrdp.ini')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  t.teardown(() => kill(proc));
  const log = (): string => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  await waitForPort(port, 15_000, () => proc.exitCode !== null).catch((e: Error) => {
    throw new Error(`${e.message}; xrdp said: ${out} ${log()}`);
  });
  return { port, log };
}

function runXfreerdp(display: string, home: string, args: string[], timeoutMs = 30_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn('xfreerdp', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DISPLAY: display, HOME: home } });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    // Killed at the deadline: reported as code null with what it printed, for the test to judge.
    const timer = setTimeout(() => {
      out += `\n[killed after ${timeoutMs} ms]`;
      p.kill('SIGKILL');
    }, timeoutMs);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** A console ticket the way a user gets one: log in to the API, ask for an RDP ticket. */
async function ticketFromApi(t: Test, gw: TestGateway): Promise<{ connectWithTicket: string; ticket: string }> {
  const api = apiClient(t, gw);
  const { token } = ok(await api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } }), 'login');
  return ok(await api<{ connectWithTicket: string; ticket: string }>('POST', '/api/desktops/win/tickets', { body: { protocol: 'rdp' }, token }), 'ticket');
}

t.test('xfreerdp /v:<ticket>.<vm> /proxy:http://gateway completes X.224 and TLS with xrdp through the tunnel', { skip: outsideNetns }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-rdp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const xrdp = await startXrdp(t, dir);
  // The recovery probe a new owner runs (protocols/probe.ts) recognises xrdp's X.224 Connection Confirm.
  t.equal(await probeConsole('127.0.0.1', xrdp.port, 'rdp', 5000), true, 'the RDP console probe recognises xrdp');
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  // The console's port is known only to the directory; the client names the published 3389.
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp.port, publishedPort: 3389 }], ['alice']);
  const x = await startXvfb(t);

  const { connectWithTicket } = await ticketFromApi(t, gw);
  t.match(connectWithTicket, /^[a-z0-9]{1,63}\.win:3389$/, 'the ticket is a DNS label in front of the VM name');
  const ok = await runXfreerdp(x.display, dir, [`/v:${connectWithTicket}`, `/proxy:http://127.0.0.1:${gw.port}`, '/cert:ignore', '/auth-only', '/u:x', '/p:y']);
  t.equal(ok.code, 0, 'xfreerdp /auth-only exits 0 once X.224 and TLS went through', { output: ok.out });
  t.match(xrdp.log(), /TLS connection established from 127\.0\.0\.1/, "xrdp's log says the TLS connection was established");
  await t.resolves(
    until(() => gw.logs.some((l) => l.event === 'tunnel' && l.vm === 'win'), { intervalMs: 50 }),
    'the gateway logged the tunnel',
  );
  const tunnel = gw.logs.find((l) => l.event === 'tunnel' && l.vm === 'win')!;
  t.match(tunnel, { protocol: 'rdp', transport: 'connect', user: 'alice' });
  t.ok(Number(tunnel.bytesToClient) > 100 && Number(tunnel.bytesToConsole) > 100, 'the TLS handshake went through the gateway');
  t.notMatch(gw.logText(), connectWithTicket.split('.')[0]!, 'the ticket never reaches the log');

  const established = (): number => (xrdp.log().match(/TLS connection established/g) ?? []).length;
  const before = established();
  // Killed at its 15 s deadline once, under a full-suite load; not reproduced since in 100 runs
  // beside four busy loops (0.5-1.4 s). Its path, traced: resolve the made-up target name (fails
  // at once in this namespace), one CONNECT, the 407, exit. The debug log (timestamped stages)
  // shows where it waited if it happens again.
  const forgedStarted = Date.now();
  const forged = await runXfreerdp(x.display, dir, [`/v:${'a'.repeat(50)}.win:3389`, `/proxy:http://127.0.0.1:${gw.port}`, '/cert:ignore', '/auth-only', '/u:x', '/p:y', '/log-level:DEBUG'], 15_000);
  t.comment(`forged ticket: xfreerdp gave up after ${Date.now() - forgedStarted} ms (exit ${String(forged.code)})`);
  t.not(forged.code, null, 'xfreerdp gave up by itself, not killed at the deadline', { output: forged.out });
  t.not(forged.code, 0, 'a made-up ticket gets nowhere', { output: forged.out });
  t.ok(gw.logs.some((l) => l.event === 'tunnel-refused'), 'the gateway refused it', { output: forged.out });
  t.equal(established(), before, 'and xrdp saw no connection for it');
});
