/**
 * xrdp and xfreerdp as the RDP end-to-end tests run them (inside a loopback-only network
 * namespace, see netns.ts): xrdp with its own configuration in a temporary folder (no sesman: its
 * login screen is enough), on a loopback port, TLS with a certificate made for the run; xfreerdp
 * under Xvfb with a deadline, its output kept for the test to judge.
 */
import type { Test } from 'tap';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { closedPort, waitForPort } from './net.js';
import { testPki } from './certs.js';

export interface Run {
  /** null when it had to be killed at the deadline. */
  code: number | null;
  out: string;
}

export function kill(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  const exited = once(p, 'exit').then(() => undefined);
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
  return exited.finally(() => clearTimeout(timer));
}

/** xrdp on 127.0.0.1:<port>, TLS with a certificate made for this run, logging into `dir`. */
export async function startXrdp(t: Test, dir: string): Promise<{ port: number; log: () => string }> {
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

export function runXfreerdp(display: string, home: string, args: string[], timeoutMs = 30_000): Promise<Run> {
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
