/**
 * A real SPICE server for end-to-end tests: QEMU with no disk, software emulation, the QXL
 * display, SPICE on 127.0.0.1:<port> without a password (the gateway authenticates; the port is
 * known only to the directory). SeaBIOS's "No bootable device" screen is the picture.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForPort } from './net.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Qemu {
  readonly proc: ChildProcess;
  readonly log: () => string;
  /** SIGTERM, SIGKILL after 3 s; resolves once it exited. Idempotent. */
  stop(): Promise<void>;
}

/**
 * `passwordFile`: SPICE asks for the password in that file (QEMU 7.2's way: a secret object;
 * `-spice password=` is deprecated). Without it, no password.
 */
export async function startQemuSpice(t: Teardown, port: number, opts: { passwordFile?: string } = {}): Promise<Qemu> {
  const auth = opts.passwordFile === undefined ? [] : ['-object', `secret,id=spicepw,file=${opts.passwordFile}`];
  const ticketing = opts.passwordFile === undefined ? 'disable-ticketing=on' : 'password-secret=spicepw';
  const proc = spawn(
    'qemu-system-x86_64',
    [
      '-nodefaults', '-no-user-config',
      '-machine', 'accel=tcg',
      '-m', '64',
      '-display', 'none',
      '-vga', 'qxl',
      ...auth,
      '-spice', `port=${port},addr=127.0.0.1,${ticketing}`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  proc.stdout?.on('data', (d: Buffer) => (log += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const stop = async (): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  };
  t.teardown(stop);
  await waitForPort(port, 30_000, () => proc.exitCode !== null).catch((e: Error) => {
    throw new Error(`${e.message}; qemu said: ${log}`);
  });
  return { proc, log: () => log, stop };
}

/** QEMU whose SPICE server asks for `password` (written to a file of its own, mode 0600). */
export async function startQemuSpiceWithPassword(t: Teardown, port: number, password: string): Promise<Qemu> {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-spiceauth-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const passwordFile = join(dir, 'password');
  writeFileSync(passwordFile, password, { mode: 0o600 });
  return startQemuSpice(t, port, { passwordFile });
}
