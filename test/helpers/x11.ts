/**
 * Real X servers for end-to-end tests: Xvnc (TigerVNC, an X server that is also a VNC server)
 * and Xvfb. Each picks a free display itself (`-displayfd`: the server takes the first display
 * whose lock it can create, then writes the number once it accepts clients), so tests running
 * in parallel never collide and nobody sleeps waiting for a server to come up.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { waitForPort } from './net.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface XServer {
  /** `:N` */
  readonly display: string;
  readonly proc: ChildProcess;
  /** What it printed on stderr so far. */
  readonly log: () => string;
  /** SIGTERM, then SIGKILL after 3 s; resolves once it exited. Idempotent. */
  stop(): Promise<void>;
}

async function startX(t: Teardown, cmd: string, args: string[], deadlineMs = 20_000): Promise<XServer> {
  const proc = spawn(cmd, ['-displayfd', '3', ...args], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    else proc.once('exit', () => resolve());
  });
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    }
  };
  t.teardown(stop);
  const fd3 = proc.stdio[3] as Readable;
  const display = await new Promise<string>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`${cmd} gave no display within ${deadlineMs} ms: ${log}`)), deadlineMs);
    fd3.on('data', (d: Buffer) => {
      text += d.toString();
      const m = /^(\d+)\n/.exec(text);
      if (m) {
        clearTimeout(timer);
        resolve(`:${m[1]}`);
      }
    });
    proc.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${code ?? signal}) before it was ready: ${log}`));
    });
  });
  return { display, proc, log: () => log, stop };
}

/**
 * Xvnc on a free display, its VNC server on `127.0.0.1:<rfbPort>`, by default without VNC
 * authentication (the gateway authenticates; the console port is known only to the directory).
 * `security` replaces the security options, e.g. `['-SecurityTypes', 'VncAuth', '-rfbauth', file]`.
 */
export async function startXvnc(t: Teardown, rfbPort: number, geometry = '320x240', security: readonly string[] = ['-SecurityTypes', 'None']): Promise<XServer> {
  const x = await startX(t, 'Xvnc', [
    '-geometry', geometry,
    '-depth', '24',
    '-rfbport', String(rfbPort),
    '-interface', '127.0.0.1',
    '-localhost',
    ...security,
    '-nolisten', 'tcp',
    '-AlwaysShared',
  ]);
  // The X server writes its display number before every extension's listener is guaranteed up,
  // so the VNC port is checked by connecting.
  await waitForPort(rfbPort, 10_000, () => x.proc.exitCode !== null);
  return x;
}

/** Xvnc that asks for a VNC password (VNC Authentication only), made with TigerVNC's vncpasswd. */
export async function startXvncWithPassword(t: Teardown, rfbPort: number, password: string, geometry = '320x240'): Promise<XServer> {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-vncauth-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = spawnSync('vncpasswd', ['-f'], { input: password });
  if (made.status !== 0) throw new Error(`vncpasswd: ${made.stderr.toString()}`);
  const file = join(dir, 'passwd');
  writeFileSync(file, made.stdout, { mode: 0o600 });
  return startXvnc(t, rfbPort, geometry, ['-SecurityTypes', 'VncAuth', '-rfbauth', file]);
}

/** Xvfb on a free display (for X clients under test: xfreerdp, remote-viewer). */
export function startXvfb(t: Teardown, geometry = '1024x768x24'): Promise<XServer> {
  return startX(t, 'Xvfb', ['-screen', '0', geometry, '-nolisten', 'tcp']);
}

/** Run an X client to completion (xsetroot and the like). */
export async function xRun(display: string, cmd: string, args: string[]): Promise<void> {
  const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DISPLAY: display } });
  let err = '';
  p.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const [code] = (await once(p, 'close')) as [number | null];
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`);
}

/** Paint the whole root window one colour, given as [r, g, b] (0-255), the form canvases are checked in. */
export function solidRoot(display: string, rgb: readonly number[]): Promise<void> {
  return xRun(display, 'xsetroot', ['-solid', `#${rgb.map((v) => v.toString(16).padStart(2, '0')).join('')}`]);
}
