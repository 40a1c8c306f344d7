/**
 * RDP peers for tests: xfreerdp run the way a user runs it, killed at a deadline (inside a private
 * network namespace, test/e2e/*.inner.ts; xrdp itself is test/helpers/xrdp.ts), and for tests over
 * raw sockets a stand-in RDP console and native RDP openings carrying any text, built from
 * FreeRDP's captures.
 */
import { spawn } from 'node:child_process';
import { type Backend, startBackend } from './net.js';
import * as R from '../fixtures/rdp-packets.js';
import { encodeConnectionRequest, encodePreconnectionPdu, parseConnectionRequest } from '../../protocols/rdp.js';

export interface Run {
  /** null when it had to be killed at the deadline. */
  code: number | null;
  out: string;
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

/**
 * xfreerdp run against a gateway. About one run in twenty under load, xfreerdp 2.11 hangs before
 * it opens any connection (no socket to the gateway with `ss`, nothing printed, not even with
 * /log-level:DEBUG): the one-off kills at 15 s in the CONNECT and RD Gateway tests were this. Such a
 * run, killed at its deadline while `reached` (the connections the gateway accepted) did not move,
 * says nothing about the gateway: it is run once more, and the test says so. A run that reached
 * the gateway counts, whatever it did.
 */
export async function xfreerdpTo(
  t: { comment(...args: unknown[]): void },
  reached: () => Promise<number>,
  display: string,
  home: string,
  args: string[],
  timeoutMs = 20_000,
): Promise<Run> {
  const before = await reached();
  const first = await runXfreerdp(display, home, args, timeoutMs);
  if (first.code !== null || (await reached()) !== before) return first;
  t.comment('xfreerdp hung before it connected to anything (a client-side hang: the gateway saw no connection): once more');
  return runXfreerdp(display, home, args, timeoutMs);
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** An RDP console stand-in: answers the first Connection Request with a Connection Confirm, then echoes. */
export interface RdpConsole extends Backend {
  /** The first bytes each connection sent (its Connection Request). */
  readonly requests: Buffer[];
}

export async function startRdpConsole(t: Teardown): Promise<RdpConsole> {
  const requests: Buffer[] = [];
  const b = await startBackend(t, (s) => {
    s.once('data', (d: Buffer) => {
      requests.push(d);
      s.write(R.SHADOW_CC_SSL);
      s.pipe(s);
    });
  });
  return Object.assign(b, { requests });
}

const base = (() => {
  const p = parseConnectionRequest(R.FREERDP_CR_LOAD_BALANCE_INFO);
  if (p.kind !== 'done') throw new Error('fixture');
  return p.value;
})();

/** What FreeRDP 2.11 sends for each carrier of `<text>`. */
export const opening = {
  pcb: (text: string): Buffer => Buffer.concat([encodePreconnectionPdu({ id: 0, blob: text }), R.FREERDP_CR]),
  loadBalanceInfo: (text: string): Buffer => encodeConnectionRequest({ ...base, token: { kind: 'raw', value: text } }),
  msts: (text: string): Buffer => encodeConnectionRequest({ ...base, token: { kind: 'msts', value: text } }),
};
