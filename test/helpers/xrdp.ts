/**
 * A real RDP server for end-to-end tests: xrdp with its own configuration in a test's temporary
 * folder (no sesman: xrdp paints its own login screen, which is enough to see a desktop), TLS
 * security with a certificate made for the run, on a free loopback port.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { closedPort, waitForPort } from './net.js';
import { testPki } from './certs.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Xrdp {
  readonly port: number;
  /** xrdp's log file so far, and what it printed, with its exit status once it exited. */
  readonly log: () => string;
  readonly output: () => string;
  /** SIGTERM, then SIGKILL after 3 s; resolves once it exited. */
  stop(): Promise<void>;
}

function kill(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  const exited = once(p, 'exit').then(() => undefined);
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
  return exited.finally(() => clearTimeout(timer));
}

/**
 * xrdp on 127.0.0.1:<port> (a free one unless given), logging into `dir`. `globals`: more lines
 * for its [Globals] section (e.g. the login screen's colours). `loginScreen`: list one session
 * type, for clients that get as far as xrdp's login screen (a browser): with none, xrdp 0.9.21
 * crashes painting the empty Session box; with one, it keeps a connection whose client sent FIN
 * open for about 15 s, so clients that stop after TLS (`/auth-only`) run without it.
 */
export async function startXrdp(t: Teardown, dir: string, opts: { port?: number; globals?: readonly string[]; loginScreen?: boolean } = {}): Promise<Xrdp> {
  const port = opts.port ?? (await closedPort());
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
      ...(opts.globals ?? []),
      '[Logging]',
      `LogFile=${logFile}`,
      'LogLevel=INFO',
      'EnableSyslog=false',
      'EnableConsole=false',
      '[Channels]',
      // One session type, so its login screen has something to list (with none, xrdp 0.9.21
      // crashes drawing the empty Session box: strlen(NULL) in g_mbstowcs). No sesman runs: a
      // login goes nowhere, the screen is what the tests look at.
      ...(opts.loginScreen ? ['[Xvnc]', 'name=Xvnc', 'lib=libvnc.so', 'username=ask', 'password=ask', 'ip=127.0.0.1', 'port=-1'] : []),
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
  const output = (): string => `${out}${proc.exitCode !== null || proc.signalCode !== null ? `\n[exited: ${proc.exitCode ?? proc.signalCode}]` : ''}`;
  return { port, log, output, stop: () => kill(proc) };
}
