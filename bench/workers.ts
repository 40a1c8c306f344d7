/**
 * Concurrency scaling (issue 13, "Every core"): oneport `serve` with 1..N workers next to HAProxy
 * with `nbthread 1..N`, same machine, same run, same certificate, TLS on the client leg (CONNECT
 * in TLS for oneport, TLS -> TCP for HAProxy) to the same echo/sink backend:
 *
 * - setups per second: `concurrency` clients opening tunnels in a loop (TLS handshake, CONNECT
 *   with a ticket, first echo), `setups` in all;
 * - aggregate throughput: `streams` tunnels at once each sending `mib` MiB to the sink; relay CPU
 *   is that of the relaying process tree (oneport's primary and workers; HAProxy).
 *
 * Every figure is also given as a ratio to the same server with 1 worker / 1 thread in this run.
 * The load generator is this one process: on a machine with few cores it competes with the
 * servers for them, which caps what any N can show (the report gives the load average).
 *
 *   npm run bench:workers                 N = 1..cores
 *   npm run bench:workers -- --quick      fewer setups and bytes, for a smoke test
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type Opener, type SetupRun, connectOpener, setup, throughput, tlsOpener } from './clients.js';
import { type Peer, firstMessage, ownCpuSeconds, spawnPeer, stopAll, treeCpuSeconds, waitAccepting } from './procs.js';
import type { BackendReady } from './ipc.js';
import { benchCertificate, startServe } from './gateway-rpc.js';
import { freePort } from '../test/helpers/net.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = join(BENCH_DIR, '..');
const MiB = 1024 * 1024;

const { values: args } = parseArgs({ options: { quick: { type: 'boolean', default: false }, max: { type: 'string' } } });
const quick = args.quick ?? false;
const maxN = Number(args.max ?? os.availableParallelism());
const SETUPS = quick ? 200 : 1000;
const CONCURRENCY = 16;
const STREAMS = 8;
const STREAM_MIB = quick ? 16 : 64;

interface Row {
  readonly server: 'oneport' | 'haproxy';
  readonly n: number;
  readonly setupsPerSecond: number;
  readonly setupP99Ms: number;
  /** CPU of the server's process tree per setup, and of oneport's primary alone (workers only). */
  readonly cpuMsPerSetup: number;
  readonly primaryCpuMsPerSetup: number | undefined;
  readonly mbPerSecond: number;
  readonly cpuSecondsPerGiB: number;
}

const log = (s: string): void => void process.stderr.write(`${s}\n`);

/** `total` setups over `concurrency` loops at once: the aggregate rate, and the server's CPU per setup (tree; `primary` alone). */
async function setupRate(open: Opener, total: number, concurrency: number, server: number, primary?: number): Promise<{ perSecond: number; p99Ms: number; cpuMsPerSetup: number; primaryCpuMsPerSetup: number | undefined }> {
  const cpu0 = treeCpuSeconds(server);
  const own0 = primary === undefined ? 0 : ownCpuSeconds(primary);
  const t0 = process.hrtime.bigint();
  const runs: SetupRun[] = await Promise.all(Array.from({ length: concurrency }, () => setup(open, Math.ceil(total / concurrency), 2)));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const count = runs.reduce((n, r) => n + r.count, 0);
  return {
    perSecond: count / seconds,
    p99Ms: Math.max(...runs.map((r) => r.p99Ms)),
    cpuMsPerSetup: ((treeCpuSeconds(server) - cpu0) * 1000) / count,
    primaryCpuMsPerSetup: primary === undefined ? undefined : ((ownCpuSeconds(primary) - own0) * 1000) / count,
  };
}

/** `streams` transfers at once: aggregate MB/s and the relay's CPU seconds per GiB. */
async function aggregate(open: Opener, cpu: () => number, streams: number, mib: number): Promise<{ mbPerSecond: number; cpuSecondsPerGiB: number }> {
  const cpu0 = cpu();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: streams }, () => throughput(open, mib * MiB, 64 * 1024, cpu, 300_000)));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const bytes = streams * mib * MiB;
  return { mbPerSecond: bytes / 1e6 / seconds, cpuSecondsPerGiB: (cpu() - cpu0) / (bytes / (1024 * MiB)) };
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(os.tmpdir(), 'oneport-bench-workers-'));
  process.on('exit', () => rmSync(work, { recursive: true, force: true }));
  const peers: Peer[] = [];
  const loadBefore = os.loadavg();
  const rows: Row[] = [];
  try {
    const { certFile, keyFile, pemFile, tlsOpts } = benchCertificate(work);
    const backend = spawnPeer('backend', process.execPath, ['--import', 'tsx', join(BENCH_DIR, 'backend-child.ts')], { cwd: ROOT, ipc: true, logFile: join(work, 'backend.log') });
    peers.push(backend);
    const backendPort = (await firstMessage<BackendReady>(backend, 'ready', 60_000)).port;
    const haproxyBin = ['/usr/sbin/haproxy', '/usr/bin/haproxy'].find((p) => existsSync(p));

    for (let n = 1; n <= maxN; n++) {
      // oneport with n workers (n = 1: one process, as without workers).
      const { gw, port, admin } = await startServe(work, `oneport-${n}`, peers, { workers: n, certFile, keyFile, consolePorts: [backendPort] });
      const pool: string[] = [];
      const mint = async (k: number): Promise<void> => {
        for (let i = 0; i < k; i++) pool.push(String((await admin.ticket('bench', 'bench-0', 'vnc')).ticket));
      };
      const ticket = (): string => pool.shift() ?? 'none-left';
      const open = connectOpener(port, 'bench-0', ticket, tlsOpts);
      await mint(SETUPS + CONCURRENCY * 2 + 8);
      const s = await setupRate(open, SETUPS, CONCURRENCY, gw.pid, n > 1 ? gw.pid : undefined);
      await mint(STREAMS);
      const a = await aggregate(open, () => treeCpuSeconds(gw.pid), STREAMS, STREAM_MIB);
      rows.push({ server: 'oneport', n, setupsPerSecond: s.perSecond, setupP99Ms: s.p99Ms, cpuMsPerSetup: s.cpuMsPerSetup, primaryCpuMsPerSetup: s.primaryCpuMsPerSetup, ...a });
      log(`oneport workers=${n}: ${s.perSecond.toFixed(0)} setups/s (p99 ${s.p99Ms.toFixed(1)} ms), ${a.mbPerSecond.toFixed(0)} MB/s, ${a.cpuSecondsPerGiB.toFixed(2)} CPU s/GiB`);
      await gw.stop();

      if (haproxyBin) {
        const hport = await freePort();
        const cfg = join(work, `haproxy-${n}.cfg`);
        writeFileSync(
          cfg,
          ['global', `    nbthread ${n}`, '    maxconn 9000', 'defaults', '    mode tcp', '    timeout connect 5s', '    timeout client 2m', '    timeout server 2m', 'frontend bench', `    bind 127.0.0.1:${hport} ssl crt ${pemFile}`, '    default_backend console', 'backend console', `    server backend 127.0.0.1:${backendPort}`, ''].join('\n'),
        );
        const hp = spawnPeer(`haproxy-${n}`, haproxyBin, ['-db', '-f', cfg], { logFile: join(work, `haproxy-${n}.log`) });
        peers.push(hp);
        await waitAccepting(hp, hport);
        const hopen = tlsOpener(hport, tlsOpts);
        const hs = await setupRate(hopen, SETUPS, CONCURRENCY, hp.pid);
        const ha = await aggregate(hopen, () => treeCpuSeconds(hp.pid), STREAMS, STREAM_MIB);
        rows.push({ server: 'haproxy', n, setupsPerSecond: hs.perSecond, setupP99Ms: hs.p99Ms, cpuMsPerSetup: hs.cpuMsPerSetup, primaryCpuMsPerSetup: undefined, ...ha });
        log(`haproxy nbthread=${n}: ${hs.perSecond.toFixed(0)} setups/s (p99 ${hs.p99Ms.toFixed(1)} ms), ${ha.mbPerSecond.toFixed(0)} MB/s, ${ha.cpuSecondsPerGiB.toFixed(2)} CPU s/GiB`);
        await hp.stop();
      }
    }
  } finally {
    await stopAll(peers);
  }
  const loadAfter = os.loadavg();
  const base = (server: Row['server']): Row | undefined => rows.find((r) => r.server === server && r.n === 1);
  const fmt = (x: number, d = 2): string => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const lines = [
    '# Concurrency scaling: workers vs HAProxy nbthread',
    '',
    `Run ${new Date().toISOString()} on ${os.cpus()[0]?.model ?? '?'} x ${os.cpus().length} (node ${process.version}); load average before ${loadBefore.map((x) => x.toFixed(2)).join(' ')}, after ${loadAfter.map((x) => x.toFixed(2)).join(' ')}.`,
    `Setups: ${SETUPS} tunnels over ${CONCURRENCY} concurrent clients (TLS, then CONNECT with a ticket for oneport; TLS for HAProxy; first echo). Throughput: ${STREAMS} streams at once, ${STREAM_MIB} MiB each, to the sink.`,
    'The load generator is one process on the same cores: on a small, shared machine it caps what N can show.',
    '',
    '| server | N | setups/s | x N=1 | setup p99 ms | CPU ms per setup (primary) | MB/s | x N=1 | relay CPU s/GiB |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => {
      const b = base(r.server);
      const perSetup = `${fmt(r.cpuMsPerSetup)}${r.primaryCpuMsPerSetup === undefined ? '' : ` (${fmt(r.primaryCpuMsPerSetup)})`}`;
      return `| ${r.server === 'oneport' ? 'oneport workers' : 'HAProxy nbthread'} | ${r.n} | ${fmt(r.setupsPerSecond, 0)} | ${b ? fmt(r.setupsPerSecond / b.setupsPerSecond) : '-'} | ${fmt(r.setupP99Ms, 1)} | ${perSetup} | ${fmt(r.mbPerSecond, 0)} | ${b ? fmt(r.mbPerSecond / b.mbPerSecond) : '-'} | ${fmt(r.cpuSecondsPerGiB)} |`;
    }),
    '',
    '| N | oneport ÷ HAProxy setups/s | oneport ÷ HAProxy MB/s | oneport ÷ HAProxy CPU/GiB |',
    '|---|---|---|---|',
    ...[...new Set(rows.map((r) => r.n))].map((n) => {
      const o = rows.find((r) => r.server === 'oneport' && r.n === n);
      const h = rows.find((r) => r.server === 'haproxy' && r.n === n);
      return o && h ? `| ${n} | ${fmt(o.setupsPerSecond / h.setupsPerSecond)} | ${fmt(o.mbPerSecond / h.mbPerSecond)} | ${fmt(o.cpuSecondsPerGiB / h.cpuSecondsPerGiB)} |` : `| ${n} | - | - | - |`;
    }),
    '',
  ];
  writeFileSync(join(BENCH_DIR, 'WORKERS.md'), lines.join('\n'));
  writeFileSync(join(BENCH_DIR, 'workers-results.json'), `${JSON.stringify({ loadBefore, loadAfter, setups: SETUPS, concurrency: CONCURRENCY, streams: STREAMS, streamMiB: STREAM_MIB, rows }, null, 2)}\n`);
  log(lines.join('\n'));
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    log(`bench:workers failed: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  },
);
