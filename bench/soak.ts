/**
 * The soak (issue 15): tunnels with traffic opened and closed in churn for a long time, next to
 * adversarial connections that never stop coming back, while the gateway process is probed for
 * what it holds (heap after a full collection, RSS, descriptors, timers). It must stay flat:
 * nothing grows with the number of tunnels served, and once the load stops the gateway holds what
 * it held before it began.
 *
 *   npm run soak                      30 minutes (bench/SOAK.md and bench/soak-results.json)
 *   npm run soak -- --minutes 3       the length `npm test` runs (test/soak/soak.test.ts)
 *
 * Churn clients (127.0.0.1) alternate CONNECT inside TLS and WebSocket tunnels: console banner,
 * an echo of `payloadBytes`, orderly close, next. Adversaries (127.0.0.2, their own address as
 * attackers would have) come in five kinds, each reopened as soon as the gateway drops it:
 *   slow          TLS, then one header byte every 500 ms (a slowloris)
 *   silent        TCP, not one byte
 *   half-open     TLS, half a request, then FIN
 *   never-reading a tunnel asking the console for 1 GiB, socket paused
 *   ping-flood    a WebSocket upgrade by hand, then masked pings, never reading
 */
import { setMaxListeners } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import tls from 'node:tls';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Conn, type TlsClientOptions, connectOpener, expectBanner, percentile, wsOpener } from './clients.js';
import { type Stack, startStack } from './gateway-rpc.js';
import type { GatewayProbe } from './ipc.js';
import { MODE_ECHO, MODE_SOURCE } from './ipc.js';
import { type Peer, stopAll } from './procs.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ADVERSARY_ADDRESS = '127.0.0.2';
export const ADVERSARY_KINDS = ['slow', 'silent', 'half-open', 'never-reading', 'ping-flood'] as const;
type AdversaryKind = (typeof ADVERSARY_KINDS)[number];

export interface SoakOptions {
  readonly durationMs: number;
  /** Concurrent churning clients. */
  readonly churnClients: number;
  /** Echoed through each churn tunnel. */
  readonly payloadBytes: number;
  /** Adversarial connections kept open at all times (spread over the five kinds). */
  readonly adversaries: number;
  readonly sampleEveryMs: number;
  readonly log: (line: string) => void;
}

export const DEFAULT_SOAK: Omit<SoakOptions, 'log'> = {
  durationMs: 30 * 60_000,
  churnClients: 12,
  payloadBytes: 32 * 1024,
  adversaries: 100,
  sampleEveryMs: 5000,
};

export interface SoakSample {
  readonly atS: number;
  readonly heapMiB: number;
  readonly rssMiB: number;
  readonly fds: number;
  readonly timers: number;
  readonly tunnels: number;
  readonly connections: number;
  /** Churn tunnels completed in this sample's interval, and their setup p99 (open to banner). */
  readonly tunnelsDone: number;
  readonly setupP99Ms: number;
}

export interface SoakReport {
  readonly options: Omit<SoakOptions, 'log'>;
  readonly machine: string;
  /** Idle, before the load, and idle again after it (load stopped, every connection gone). */
  readonly before: GatewayProbe;
  readonly after: GatewayProbe;
  readonly samples: readonly SoakSample[];
  readonly tunnels: number;
  /** Churn failures by message: must stay empty (nothing fails but what is injected). */
  readonly failures: Readonly<Record<string, number>>;
  /** Probes the gateway did not answer within their deadline (it stalled): must be none. */
  readonly probesMissed: number;
  /** How often each adversary kind was (re)opened: the gateway keeps cutting them. */
  readonly adversaryOpens: Readonly<Record<AdversaryKind, number>>;
}

const MiB = 1024 * 1024;
const round = (x: number, digits = 1): number => Math.round(x * 10 ** digits) / 10 ** digits;
const timersOf = (p: GatewayProbe): number => (p.resources.Timeout ?? 0) + (p.resources.Immediate ?? 0);

/** Single-use tickets, fetched from the gateway child in batches before they run out. */
class TicketPool {
  private pool: string[] = [];
  private refilling: Promise<void> | undefined;
  constructor(private readonly stack: Stack) {}

  /** A failed refill fails the callers waiting for it (each counts it), and the next take tries again. */
  async take(): Promise<string> {
    if (this.pool.length < 100) this.refill();
    while (this.pool.length === 0) await this.refill();
    return this.pool.shift() as string;
  }

  private refill(): Promise<void> {
    this.refilling ??= this.stack.rpc
      .tickets(300)
      .then((t) => void this.pool.push(...t))
      .finally(() => (this.refilling = undefined));
    // A background refill's failure is seen by whoever waits next.
    this.refilling.catch(() => undefined);
    return this.refilling;
  }
}

/** A connection that ends on its own (the gateway's deadlines, or the soak's end). */
function closed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) resolve();
    else s.once('close', () => resolve());
  });
}

function tlsFrom(port: number, t: TlsClientOptions): tls.TLSSocket {
  const raw = net.connect({ host: '127.0.0.1', port, localAddress: ADVERSARY_ADDRESS });
  raw.on('error', () => {});
  return tls.connect({ socket: raw, ca: t.ca, servername: t.servername });
}

async function adversary(kind: AdversaryKind, stack: Stack, tickets: TicketPool, stop: AbortSignal): Promise<void> {
  const { port, vm } = stack.gw;
  const t = stack.tlsOpts;
  switch (kind) {
    case 'silent': {
      const s = net.connect({ host: '127.0.0.1', port, localAddress: ADVERSARY_ADDRESS });
      s.on('error', () => {});
      return closedOrStopped(s, stop);
    }
    case 'slow': {
      const s = tlsFrom(port, t);
      s.on('error', () => {});
      const request = Buffer.from(`GET /api/me HTTP/1.1\r\nHost: localhost\r\nX-Slow: ${'x'.repeat(4000)}\r\n\r\n`);
      let i = 0;
      const timer = setInterval(() => {
        if (s.writable && i < request.length) s.write(request.subarray(i, ++i));
      }, 500);
      await closedOrStopped(s, stop);
      clearInterval(timer);
      return;
    }
    case 'half-open': {
      const s = tlsFrom(port, t);
      s.on('error', () => {});
      // Read (and drop) whatever comes back, so that the gateway closing it is seen here.
      s.on('data', () => {});
      s.once('secureConnect', () => s.end(`CONNECT ${vm}:5900 HTTP/1.1\r\nHost: ${vm}`));
      return closedOrStopped(s, stop);
    }
    case 'never-reading': {
      const s = tlsFrom(port, t);
      s.on('error', () => {});
      const ticket = await tickets.take();
      s.once('secureConnect', () => {
        const size = Buffer.alloc(8);
        size.writeBigUInt64BE(1n << 30n);
        s.write(`CONNECT ${vm}:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${ticket}\r\n\r\n`);
        s.write(Buffer.concat([Buffer.from([MODE_SOURCE]), size]));
        s.pause();
      });
      return closedOrStopped(s, stop);
    }
    case 'ping-flood': {
      const s = tlsFrom(port, t);
      s.on('error', () => {});
      const ticket = await tickets.take();
      s.once('secureConnect', () => {
        s.write(
          `GET /tunnel/${vm}/vnc?ticket=${ticket} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n',
        );
        s.pause();
        // Masked, empty pings (FIN + opcode 9, mask bit, zero length, the mask), written while the
        // gateway takes them; never a byte read back.
        const ping = Buffer.from([0x89, 0x80, 1, 2, 3, 4]);
        const burst = Buffer.concat(Array.from({ length: 512 }, () => ping));
        const flood = (): void => {
          while (!stop.aborted && s.writable && s.write(burst));
        };
        s.on('drain', flood);
        flood();
      });
      return closedOrStopped(s, stop);
    }
  }
}

function closedOrStopped(s: net.Socket, stop: AbortSignal): Promise<void> {
  const onStop = (): void => void s.destroy();
  stop.addEventListener('abort', onStop, { once: true });
  return closed(s).finally(() => stop.removeEventListener('abort', onStop));
}

/** One churn tunnel: open, banner, echo, orderly close. Returns the setup time (open to banner). */
async function churnOnce(open: () => Promise<Conn>, payload: Buffer): Promise<number> {
  const t0 = process.hrtime.bigint();
  const c = await open();
  try {
    await expectBanner(c);
    const setupMs = Number(process.hrtime.bigint() - t0) / 1e6;
    await c.write(Buffer.concat([Buffer.from([MODE_ECHO]), payload]));
    const back = await c.read(payload.length, 15_000);
    if (!back.equals(payload)) throw new Error('echo differs from what was sent');
    return setupMs;
  } finally {
    await c.close().catch(() => c.destroy());
  }
}

/** The gateway idle again: no tunnel and no connection left (bounded). */
async function idleProbe(stack: Stack, timeoutMs: number): Promise<GatewayProbe> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await stack.rpc.probe();
    if ((p.tunnels === 0 && p.connections === 0) || Date.now() > deadline) return p;
    await sleep(250);
  }
}

/** A console ticket's life (the gateway's default auth.ticketTtlMs) and the memory store's sweep period, with a margin. */
const TICKET_WINDOW_MS = 60_000 + 30_000 + 2000;
/** How long every adversary kind runs once before the idle baseline is taken. */
const WARM_ADVERSARIES_MS = 5000;

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const work = mkdtempSync(join(os.tmpdir(), 'oneport-soak-'));
  const peers: Peer[] = [];
  try {
    const stack = await startStack(work, peers, opts.log, ['--expose-gc']);
    const { port, vm } = stack.gw;
    const tickets = new TicketPool(stack);
    // The openers take a ticket synchronously: fetch it first, then open with it.
    const openWith = async (i: number): Promise<Conn> => {
      const ticket = await tickets.take();
      return i % 2 === 0
        ? connectOpener(port, vm, () => ticket, stack.tlsOpts)()
        : wsOpener(() => `wss://127.0.0.1:${port}/tunnel/${vm}/vnc?ticket=${ticket}`, stack.tlsOpts)();
    };
    // Warm the JIT and the pools so the baseline is the gateway at rest, not at its first breath:
    // churn, then every adversary for a few seconds (their refusal paths compile and size their
    // bounded tables too). What the soak then leaves behind is growth, not first-use.
    const payload = Buffer.alloc(opts.payloadBytes, 0x5a);
    for (let i = 0; i < 20; i++) await churnOnce(() => openWith(i), payload);
    const warm = new AbortController();
    setMaxListeners(opts.adversaries + 10, warm.signal);
    const warming = ADVERSARY_KINDS.map(async (kind) => {
      while (!warm.signal.aborted) {
        await adversary(kind, stack, tickets, warm.signal).catch(() => undefined);
        await sleep(20);
      }
    });
    await sleep(WARM_ADVERSARIES_MS);
    warm.abort();
    await Promise.all(warming);
    const before = await idleProbe(stack, 10_000);
    opts.log(`  idle before: heap ${round(before.heapUsed / MiB)} MiB, rss ${round(before.rss / MiB)} MiB, ${before.fds} fds, ${timersOf(before)} timers`);

    const stop = new AbortController();
    // Every adversary's socket listens for the end of the soak.
    setMaxListeners(opts.adversaries + 10, stop.signal);
    const failures: Record<string, number> = {};
    const adversaryOpens = Object.fromEntries(ADVERSARY_KINDS.map((k) => [k, 0])) as Record<AdversaryKind, number>;
    let window: number[] = [];
    let total = 0;

    const churn = async (id: number): Promise<void> => {
      for (let i = id; !stop.signal.aborted; i++) {
        try {
          window.push(await churnOnce(() => openWith(i), payload));
          total++;
        } catch (e) {
          if (stop.signal.aborted) return;
          const key = (e as Error).message.slice(0, 120);
          failures[key] = (failures[key] ?? 0) + 1;
          await sleep(50);
        }
      }
    };
    const adversaryLoop = async (kind: AdversaryKind): Promise<void> => {
      while (!stop.signal.aborted) {
        adversaryOpens[kind]++;
        await adversary(kind, stack, tickets, stop.signal).catch(() => undefined);
        // A refused connection comes straight back, as a real attacker's would; a breath only so
        // the loop cannot spin on a synchronous refusal.
        await sleep(20);
      }
    };

    const startedAt = Date.now();
    const loops = [
      ...Array.from({ length: opts.churnClients }, (_, i) => churn(i)),
      ...Array.from({ length: opts.adversaries }, (_, i) => adversaryLoop(ADVERSARY_KINDS[i % ADVERSARY_KINDS.length] as AdversaryKind)),
    ];
    const samples: SoakSample[] = [];
    let probesMissed = 0;
    while (Date.now() - startedAt < opts.durationMs) {
      await sleep(Math.min(opts.sampleEveryMs, opts.durationMs - (Date.now() - startedAt)));
      const p = await stack.rpc.probe().catch((e: unknown) => {
        probesMissed++;
        opts.log(`  probe missed: ${(e as Error).message}`);
        return undefined;
      });
      if (!p) continue;
      const done = window.sort((a, b) => a - b);
      window = [];
      const s: SoakSample = {
        atS: round((Date.now() - startedAt) / 1000, 0),
        heapMiB: round(p.heapUsed / MiB),
        rssMiB: round(p.rss / MiB),
        fds: p.fds,
        timers: timersOf(p),
        tunnels: p.tunnels,
        connections: p.connections,
        tunnelsDone: done.length,
        setupP99Ms: round(percentile(done, 0.99), 2),
      };
      samples.push(s);
      opts.log(`  ${String(s.atS).padStart(5)} s  heap ${s.heapMiB} MiB  rss ${s.rssMiB} MiB  fds ${s.fds}  timers ${s.timers}  tunnels ${s.tunnels}  conns ${s.connections}  done ${s.tunnelsDone}  setup p99 ${s.setupP99Ms} ms`);
    }
    stop.abort();
    await Promise.all(loops);
    // Console tickets live until they expire (auth.ticketTtlMs, 60 s) and the store sweeps every
    // 30 s: the last 90 s of churn left a few thousand, a few MiB, which time removes. The baseline
    // after is taken once they are gone, so what remains is what the soak would leak.
    opts.log(`  waiting ${TICKET_WINDOW_MS / 1000} s for the last tickets to expire and be swept`);
    await sleep(TICKET_WINDOW_MS);
    const after = await idleProbe(stack, 30_000);
    opts.log(`  idle after: heap ${round(after.heapUsed / MiB)} MiB, rss ${round(after.rss / MiB)} MiB, ${after.fds} fds, ${timersOf(after)} timers`);
    await stack.rpc.stop().catch(() => undefined);
    const { log: _log, ...options } = opts;
    return { options, machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}`, before, after, samples, tunnels: total, failures, probesMissed, adversaryOpens };
  } finally {
    await stopAll(peers);
    rmSync(work, { recursive: true, force: true });
  }
}

/** What the soak must show, as (label, ok, detail): used by the test and printed by the CLI. */
export function judgeSoak(r: SoakReport): Array<{ label: string; ok: boolean; detail: string }> {
  const mid = r.samples.slice(Math.floor(r.samples.length / 4), Math.floor(r.samples.length / 2));
  const last = r.samples.slice(Math.floor((3 * r.samples.length) / 4));
  const med = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
  const heapMid = med(mid.map((s) => s.heapMiB));
  const heapLast = med(last.map((s) => s.heapMiB));
  const p99Mid = med(mid.map((s) => s.setupP99Ms));
  const p99Last = med(last.map((s) => s.setupP99Ms));
  const failures = Object.values(r.failures).reduce((a, b) => a + b, 0);
  return [
    { label: 'no churn tunnel failed', ok: failures === 0, detail: failures === 0 ? `${r.tunnels} tunnels` : JSON.stringify(r.failures) },
    { label: 'the gateway answered every probe', ok: r.probesMissed === 0, detail: `${r.probesMissed} missed` },
    { label: 'descriptors back to idle', ok: r.after.fds <= r.before.fds + 4, detail: `${r.before.fds} -> ${r.after.fds}` },
    { label: 'timers back to idle', ok: timersOf(r.after) <= timersOf(r.before) + 4, detail: `${timersOf(r.before)} -> ${timersOf(r.after)}` },
    { label: 'heap back to idle (after a full GC)', ok: r.after.heapUsed <= r.before.heapUsed + 8 * MiB, detail: `${round(r.before.heapUsed / MiB)} -> ${round(r.after.heapUsed / MiB)} MiB` },
    { label: 'heap flat under load (last quarter vs second quarter)', ok: heapLast <= heapMid * 1.25 + 4, detail: `median ${heapMid} -> ${heapLast} MiB` },
    { label: 'setup p99 steady (last quarter vs second quarter)', ok: p99Last <= p99Mid * 3 + 20, detail: `median ${p99Mid} -> ${p99Last} ms` },
    { label: 'adversaries kept coming back (they were cut)', ok: Object.values(r.adversaryOpens).every((n) => n > 1), detail: JSON.stringify(r.adversaryOpens) },
  ];
}

export function renderSoak(r: SoakReport): string {
  const verdicts = judgeSoak(r);
  const lines = [
    '# Soak results',
    '',
    `Generated by \`npm run soak\` (bench/soak.ts): ${round(r.options.durationMs / 60_000)} minutes, ${r.options.churnClients} churning clients (CONNECT in TLS and WSS, ${r.options.payloadBytes} bytes echoed each), ${r.options.adversaries} adversarial connections (${ADVERSARY_KINDS.join(', ')}), on ${r.machine}.`,
    '',
    '| check | result | detail |',
    '|---|---|---|',
    ...verdicts.map((v) => `| ${v.label} | ${v.ok ? 'ok' : '**FAILED**'} | ${v.detail} |`),
    '',
    '| time (s) | heap (MiB, after GC) | RSS (MiB) | fds | timers | tunnels | connections | tunnels done | setup p99 (ms) |',
    '|---|---|---|---|---|---|---|---|---|',
    ...r.samples.map((s) => `| ${s.atS} | ${s.heapMiB} | ${s.rssMiB} | ${s.fds} | ${s.timers} | ${s.tunnels} | ${s.connections} | ${s.tunnelsDone} | ${s.setupP99Ms} |`),
    '',
  ];
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { minutes: { type: 'string', default: '30' }, adversaries: { type: 'string' }, clients: { type: 'string' } } });
  const minutes = Number(values.minutes);
  if (!(minutes > 0)) throw new Error('--minutes must be a positive number');
  const report = await runSoak({
    ...DEFAULT_SOAK,
    durationMs: minutes * 60_000,
    sampleEveryMs: minutes >= 10 ? 30_000 : 5000,
    ...(values.adversaries ? { adversaries: Number(values.adversaries) } : {}),
    ...(values.clients ? { churnClients: Number(values.clients) } : {}),
    log: (l) => console.log(l),
  });
  writeFileSync(join(BENCH_DIR, 'soak-results.json'), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(BENCH_DIR, 'SOAK.md'), renderSoak(report));
  const verdicts = judgeSoak(report);
  for (const v of verdicts) console.log(`${v.ok ? 'ok  ' : 'FAIL'}  ${v.label}: ${v.detail}`);
  process.exitCode = verdicts.every((v) => v.ok) ? 0 : 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
