/**
 * End-to-end benchmark: every way to reach a console, side by side, in one run, on one machine.
 *
 *   (a) direct TCP to the backend (baseline)
 *   (b) oneport HTTP CONNECT in clear text, ticket as Bearer
 *   (c) oneport HTTP CONNECT inside TLS
 *   (d) oneport WebSocket tunnel over TLS (wss://.../tunnel/<vm>/vnc?ticket=..., binary frames)
 *   (e) HAProxy as a TLS-terminating TCP proxy           (when /usr/sbin/haproxy exists)
 *   (f) websockify over TLS (--cert)                      (when websockify is installed)
 *   (g) HAProxy as a plain TCP proxy, no TLS              (reference for (b); with HAProxy)
 *   (h) oneport RD Gateway entrance, WebSocket variant (MS-TSGU DATA packets in wss frames)
 *
 * The gateway, the backend and the peers each run in their own process (CPU time per process from
 * /proc); this process is the load generator. Measurements run round-robin over the paths so
 * drift on a shared machine hits all of them alike. Writes bench/RESULTS.md and bench/results.json.
 *
 *   npm run bench                      full run (about 1.5 minutes on 2 cores)
 *   npm run bench -- --quick           smaller sizes, for a smoke test
 *   npm run bench -- --only a,c,e      some paths only; --no-micro skips the micro-benchmarks
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import {
  type IdleRun,
  type LatencyRun,
  type Opener,
  type SetupRun,
  type ThroughputRun,
  connectOpener,
  download,
  idleMemory,
  latency,
  rdgOpener,
  setup,
  tcpOpener,
  throughput,
  tlsOpener,
  wsOpener,
} from './clients.js';
import { type GatewayRpc, gatewayLogFile, startStack } from './gateway-rpc.js';
import { type Peer, rssKiB, spawnPeer, stopAll, tail, treeCpuSeconds, waitAccepting } from './procs.js';
import { freePort } from '../test/helpers/net.js';
import { type MicroResult, fmtNs, runMicro } from './micro.js';
import { writeChart } from './chart.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

// ---------------------------------------------------------------------------------------------
// Settings

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    rounds: { type: 'string' },
    pings: { type: 'string' },
    setups: { type: 'string' },
    idle: { type: 'string' },
    only: { type: 'string' },
    'no-micro': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: npm run bench -- [--quick] [--mib N] [--rounds N] [--pings N] [--setups N] [--idle N] [--only a,b,...] [--no-micro]');
  process.exit(0);
}
const quick = args.quick ?? false;
const settings = {
  throughputBytes: Number(args.mib ?? (quick ? 32 : 256)) * MiB,
  throughputRounds: Number(args.rounds ?? (quick ? 1 : 5)),
  warmupBytes: (quick ? 8 : 32) * MiB,
  /** Console-to-client transfers: same size and rounds as the other direction. */
  downloads: true,
  chunkBytes: 64 * 1024,
  pings: Number(args.pings ?? (quick ? 1000 : 5000)),
  pingWarmup: quick ? 100 : 500,
  pingBytes: 64,
  setups: Number(args.setups ?? (quick ? 50 : 300)),
  setupWarmup: quick ? 5 : 20,
  /** Idle tunnels held open at once to measure the relay's memory per tunnel (TLS paths). */
  idleTunnels: Number(args.idle ?? (quick ? 300 : 4000)),
  idleWarmup: quick ? 20 : 200,
  /** The same idle tunnels again, each after carrying this much each way (a session whose user went away). */
  idleTrafficBytes: 256 * 1024,
  transferTimeoutMs: 120_000,
  micro: !(args['no-micro'] ?? false),
  microMsPerCase: quick ? 100 : 300,
};
const only = args.only ? new Set(args.only.split(',').map((s) => s.trim())) : undefined;

// A hard bound on the whole run: children are killed by the exit handler in procs.ts.
const watchdog = setTimeout(() => {
  console.error('bench: watchdog fired (run took too long); stopping');
  process.exit(2);
}, quick ? 3 * 60_000 : 6 * 60_000);
watchdog.unref();
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));

const log = (s: string): void => console.log(s);

// ---------------------------------------------------------------------------------------------
// Paths

interface PathDef {
  readonly key: string;
  readonly id: string;
  readonly label: string;
  readonly open: Opener;
  /** The process doing the relaying (CPU measured); none for direct TCP. */
  readonly relay: Peer | undefined;
  /** Needs single-use tickets from the gateway (for RDP: the RD Gateway path). */
  readonly tickets: boolean | 'rdp';
}

interface PathResult {
  key: string;
  id: string;
  label: string;
  tls: string | undefined;
  throughputRuns: ThroughputRun[];
  throughputMBps: number | undefined;
  cpuSecondsPerGiB: number | undefined;
  downloadRuns: ThroughputRun[];
  downloadMBps: number | undefined;
  downloadCpuSecondsPerGiB: number | undefined;
  latency: Omit<LatencyRun, 'samplesUs'> | undefined;
  setup: SetupRun | undefined;
  setupCpuMsPerTunnel: number | undefined;
  idle: IdleRun | undefined;
  /** The same after `idleTrafficBytes` each way through each tunnel. */
  idleAfterTraffic: IdleRun | undefined;
  errors: string[];
}

function findExecutable(name: string, preferred: readonly string[]): string | undefined {
  for (const p of preferred) if (existsSync(p)) return p;
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  return undefined;
}

function version(cmd: string, argv: string[]): string | undefined {
  try {
    const out = execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
    return out.split('\n')[0]?.trim();
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return (err.stdout || err.stderr || '').split('\n')[0]?.trim() || undefined;
  }
}

function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const work = mkdtempSync(join(os.tmpdir(), 'oneport-bench-'));
  // Also on Ctrl-C and the watchdog (process.exit skips `finally`).
  const removeWork = (): void => rmSync(work, { recursive: true, force: true });
  process.on('exit', removeWork);
  const peers: Peer[] = [];
  let rpc: GatewayRpc | undefined;
  const startedAt = new Date();
  const loadBefore = os.loadavg();
  const machine = {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    memoryGiB: Math.round((os.totalmem() / GiB) * 10) / 10,
  };
  log(`oneport bench: node ${process.version}, ${machine.cpu}, ${machine.cores} cores; work dir ${work}`);
  const results: PathResult[] = [];
  let micro: MicroResult[] = [];
  const peerInfo: Record<string, string | undefined> = {};
  let gatewayLog: ReturnType<typeof summariseGatewayLog> | undefined;
  let gatewayMetrics: string[] = [];
  let fatal: string | undefined;

  try {
    // One certificate for everyone who terminates TLS: oneport, HAProxy, websockify.
    const stack = await startStack(work, peers, log);
    const { pemFile, tlsOpts, backendPort, gateway, gw } = stack;
    rpc = stack.rpc;
    peerInfo.gatewayWsUnmask = stack.wsUnmask;

    let haproxy: { peer: Peer; port: number; plainPort: number } | undefined;
    const haproxyBin = findExecutable('haproxy', ['/usr/sbin/haproxy']);
    peerInfo.haproxy = haproxyBin ? version(haproxyBin, ['-v']) : undefined;
    if (haproxyBin && (!only || only.has('e') || only.has('g'))) {
      const port = await freePort();
      const plainPort = await freePort();
      const cfg = join(work, 'haproxy.cfg');
      writeFileSync(
        cfg,
        [
          'global',
          '    maxconn 9000',
          'defaults',
          '    mode tcp',
          '    timeout connect 5s',
          '    timeout client 2m',
          '    timeout server 2m',
          'frontend bench',
          `    bind 127.0.0.1:${port} ssl crt ${pemFile}`,
          '    default_backend console',
          'frontend bench_plain',
          `    bind 127.0.0.1:${plainPort}`,
          '    default_backend console',
          'backend console',
          `    server backend 127.0.0.1:${backendPort}`,
          '',
        ].join('\n'),
      );
      const peer = spawnPeer('haproxy', haproxyBin, ['-db', '-f', cfg], { logFile: join(work, 'haproxy.log') });
      peers.push(peer);
      await waitAccepting(peer, port);
      await waitAccepting(peer, plainPort);
      haproxy = { peer, port, plainPort };
      log(`  haproxy pid ${peer.pid} on 127.0.0.1:${port} (TLS) and :${plainPort} (plain) (${peerInfo.haproxy ?? '?'})`);
    }

    let websockify: { peer: Peer; port: number } | undefined;
    const websockifyBin = findExecutable('websockify', ['/usr/bin/websockify']);
    peerInfo.websockify = websockifyBin ? dpkgVersion('websockify') : undefined;
    if (websockifyBin && (!only || only.has('f'))) {
      const port = await freePort();
      const peer = spawnPeer('websockify', websockifyBin, [`--cert=${pemFile}`, `127.0.0.1:${port}`, `127.0.0.1:${backendPort}`], {
        logFile: join(work, 'websockify.log'),
      });
      peers.push(peer);
      await waitAccepting(peer, port);
      websockify = { peer, port };
      log(`  websockify pid ${peer.pid} on 127.0.0.1:${port} (${peerInfo.websockify ?? '?'})`);
    }

    let nodeRelay: { peer: Peer; port: number } | undefined;
    if (!only || only.has('i')) {
      const port = await freePort();
      const peer = spawnPeer('node-relay', process.execPath, ['--import', 'tsx', join(BENCH_DIR, 'node-relay.ts'), String(port), String(backendPort), pemFile], {
        logFile: join(work, 'node-relay.log'),
        cwd: join(BENCH_DIR, '..'),
      });
      peers.push(peer);
      await waitAccepting(peer, port);
      nodeRelay = { peer, port };
      log(`  node TLS pipe relay pid ${peer.pid} on 127.0.0.1:${port}`);
    }

    // Single-use tickets, minted right before each measurement that needs them (they live 60 s).
    let pool: string[] = [];
    const ticket = (): string => {
      const t = pool.shift();
      if (!t) throw new Error('ticket pool empty');
      return t;
    };
    const refill = async (p: PathDef, n: number): Promise<void> => {
      if (p.tickets) pool = await (rpc as GatewayRpc).tickets(n, p.tickets === 'rdp' ? 'rdp' : 'vnc');
    };

    const all: PathDef[] = [
      { key: 'a', id: 'direct', label: 'direct TCP (baseline)', open: tcpOpener(backendPort), relay: undefined, tickets: false },
      { key: 'b', id: 'connect', label: 'oneport CONNECT, clear text', open: connectOpener(gw.port, gw.vm, ticket), relay: gateway, tickets: true },
      { key: 'c', id: 'connect-tls', label: 'oneport CONNECT in TLS', open: connectOpener(gw.port, gw.vm, ticket, tlsOpts), relay: gateway, tickets: true },
      {
        key: 'd',
        id: 'wss',
        label: 'oneport WebSocket (wss)',
        open: wsOpener(() => `wss://127.0.0.1:${gw.port}/tunnel/${gw.vm}/vnc?ticket=${ticket()}`, tlsOpts),
        relay: gateway,
        tickets: true,
      },
    ];
    all.push({ key: 'h', id: 'rdg-ws', label: 'oneport RD Gateway (MS-TSGU, wss)', open: rdgOpener(gw.port, gw.vm, ticket, tlsOpts), relay: gateway, tickets: 'rdp' });
    if (haproxy) all.push({ key: 'e', id: 'haproxy', label: 'HAProxy TLS -> TCP', open: tlsOpener(haproxy.port, tlsOpts), relay: haproxy.peer, tickets: false });
    if (websockify) {
      const port = websockify.port;
      all.push({ key: 'f', id: 'websockify', label: 'websockify (wss)', open: wsOpener(() => `wss://127.0.0.1:${port}/`, tlsOpts), relay: websockify.peer, tickets: false });
    }
    if (nodeRelay) all.push({ key: 'i', id: 'node-relay', label: 'Node TLS pipe relay (floor)', open: tlsOpener(nodeRelay.port, tlsOpts), relay: nodeRelay.peer, tickets: false });
    if (haproxy) all.push({ key: 'g', id: 'haproxy-tcp', label: 'HAProxy TCP, no TLS', open: tcpOpener(haproxy.plainPort), relay: haproxy.peer, tickets: false });
    const paths = all.filter((p) => !only || only.has(p.key) || only.has(p.id));
    for (const p of paths) {
      results.push({
        key: p.key,
        id: p.id,
        label: p.label,
        tls: undefined,
        throughputRuns: [],
        throughputMBps: undefined,
        cpuSecondsPerGiB: undefined,
        downloadRuns: [],
        downloadMBps: undefined,
        downloadCpuSecondsPerGiB: undefined,
        latency: undefined,
        setup: undefined,
        setupCpuMsPerTunnel: undefined,
        idle: undefined,
        idleAfterTraffic: undefined,
        errors: [],
      });
    }
    const resultOf = (p: PathDef): PathResult => results.find((r) => r.key === p.key) as PathResult;
    const cpuOf = (p: PathDef) => (): number => (p.relay ? treeCpuSeconds(p.relay.pid) : Number.NaN);
    const failed = new Set<string>();
    const attempt = async <T>(p: PathDef, what: string, fn: () => Promise<T>): Promise<T | undefined> => {
      try {
        return await fn();
      } catch (e) {
        const msg = `${what}: ${(e as Error).message}`;
        resultOf(p).errors.push(msg);
        log(`    (${p.key}) ${p.label}: ERROR ${msg}`);
        return undefined;
      }
    };

    // --- memory per idle tunnel (first: the relays' heaps are not yet grown by the transfers) -
    const idlePaths = paths.filter((p) => ['c', 'e', 'i'].includes(p.key) && p.relay);
    if (settings.idleTunnels > 0 && idlePaths.length) {
      log(`\nmemory per idle tunnel: RSS growth of the relay over ${settings.idleTunnels} idle tunnels (TLS client leg, console leg), after ${settings.idleWarmup} opened and closed`);
      for (const p of idlePaths) {
        const pid = (p.relay as Peer).pid;
        const r = await attempt(p, 'idle memory', async () => {
          await refill(p, settings.idleTunnels + settings.idleWarmup + 10);
          return idleMemory(p.open, settings.idleTunnels, settings.idleWarmup, () => rssKiB(pid));
        });
        if (!r) continue;
        resultOf(p).idle = r;
        log(`  (${p.key}) ${p.label.padEnd(28)} ${r.perTunnelKiB.toFixed(1).padStart(6)} KiB/tunnel   RSS ${(r.rssBeforeKiB / 1024).toFixed(1)} -> ${(r.rssAfterKiB / 1024).toFixed(1)} MiB (opened in ${r.openSeconds.toFixed(1)} s)`);
      }
      log(`memory per idle tunnel after ${settings.idleTrafficBytes / 1024} KiB each way through each tunnel`);
      for (const p of idlePaths) {
        const pid = (p.relay as Peer).pid;
        const r = await attempt(p, 'idle memory after traffic', async () => {
          await refill(p, settings.idleTunnels + settings.idleWarmup + 10);
          return idleMemory(p.open, settings.idleTunnels, settings.idleWarmup, () => rssKiB(pid), 32, settings.idleTrafficBytes);
        });
        if (!r) continue;
        resultOf(p).idleAfterTraffic = r;
        log(`  (${p.key}) ${p.label.padEnd(28)} ${r.perTunnelKiB.toFixed(1).padStart(6)} KiB/tunnel   RSS ${(r.rssBeforeKiB / 1024).toFixed(1)} -> ${(r.rssAfterKiB / 1024).toFixed(1)} MiB (opened in ${r.openSeconds.toFixed(1)} s)`);
      }
    }

    // --- throughput ---------------------------------------------------------------------------
    log(`\nclient -> console: ${settings.throughputRounds} x ${settings.throughputBytes / MiB} MiB one way into the sink, ${settings.chunkBytes / 1024} KiB writes (after a ${settings.warmupBytes / MiB} MiB warm-up)`);
    for (const p of paths) {
      const r = await attempt(p, 'throughput warm-up', async () => {
        await refill(p, 1);
        return throughput(p.open, settings.warmupBytes, settings.chunkBytes, () => Number.NaN, settings.transferTimeoutMs);
      });
      if (!r) failed.add(`${p.key}:throughput`);
      else resultOf(p).tls = r.tls;
    }
    for (let round = 1; round <= settings.throughputRounds; round++) {
      for (const p of paths) {
        if (failed.has(`${p.key}:throughput`)) continue;
        const r = await attempt(p, `throughput round ${round}`, async () => {
          await refill(p, 1);
          return throughput(p.open, settings.throughputBytes, settings.chunkBytes, cpuOf(p), settings.transferTimeoutMs);
        });
        if (!r) {
          failed.add(`${p.key}:throughput`);
          continue;
        }
        resultOf(p).throughputRuns.push(r);
        const cpu = Number.isFinite(r.relayCpuSeconds) ? `, relay CPU ${r.relayCpuSeconds.toFixed(2)} s` : '';
        log(`  round ${round} (${p.key}) ${p.label.padEnd(28)} ${r.mbPerSecond.toFixed(0).padStart(6)} MB/s  (${r.seconds.toFixed(2)} s${cpu})`);
      }
    }
    for (const p of paths) {
      const res = resultOf(p);
      res.throughputMBps = median(res.throughputRuns.map((r) => r.mbPerSecond));
      const cpu = res.throughputRuns.reduce((a, r) => a + r.relayCpuSeconds, 0);
      const bytes = res.throughputRuns.reduce((a, r) => a + r.bytes, 0);
      res.cpuSecondsPerGiB = p.relay && bytes > 0 && Number.isFinite(cpu) ? cpu / (bytes / GiB) : undefined;
    }

    // --- the other direction: console to client -------------------------------------------------
    if (settings.downloads) {
      log(`\nconsole -> client: ${settings.throughputRounds} x ${settings.throughputBytes / MiB} MiB from the backend (64 KiB writes) to the client`);
      for (const p of paths) {
        const r = await attempt(p, 'download warm-up', async () => {
          await refill(p, 1);
          return download(p.open, settings.warmupBytes, () => Number.NaN, settings.transferTimeoutMs);
        });
        if (!r) failed.add(`${p.key}:download`);
      }
      for (let round = 1; round <= settings.throughputRounds; round++) {
        for (const p of paths) {
          if (failed.has(`${p.key}:download`)) continue;
          const r = await attempt(p, `download round ${round}`, async () => {
            await refill(p, 1);
            return download(p.open, settings.throughputBytes, cpuOf(p), settings.transferTimeoutMs);
          });
          if (!r) {
            failed.add(`${p.key}:download`);
            continue;
          }
          resultOf(p).downloadRuns.push(r);
          const cpu = Number.isFinite(r.relayCpuSeconds) ? `, relay CPU ${r.relayCpuSeconds.toFixed(2)} s` : '';
          log(`  round ${round} (${p.key}) ${p.label.padEnd(28)} ${r.mbPerSecond.toFixed(0).padStart(6)} MB/s  (${r.seconds.toFixed(2)} s${cpu})`);
        }
      }
      for (const p of paths) {
        const res = resultOf(p);
        res.downloadMBps = median(res.downloadRuns.map((r) => r.mbPerSecond));
        const cpu = res.downloadRuns.reduce((a, r) => a + r.relayCpuSeconds, 0);
        const bytes = res.downloadRuns.reduce((a, r) => a + r.bytes, 0);
        res.downloadCpuSecondsPerGiB = p.relay && bytes > 0 && Number.isFinite(cpu) ? cpu / (bytes / GiB) : undefined;
      }
    }

    // --- latency ------------------------------------------------------------------------------
    log(`\nlatency: ${settings.pings} sequential ${settings.pingBytes}-byte round trips over one tunnel (after ${settings.pingWarmup})`);
    for (const p of paths) {
      const r = await attempt(p, 'latency', async () => {
        await refill(p, 1);
        return latency(p.open, settings.pings, settings.pingWarmup, settings.pingBytes);
      });
      if (!r) continue;
      const { samplesUs: _samples, ...rest } = r;
      resultOf(p).latency = rest;
      log(`  (${p.key}) ${p.label.padEnd(28)} p50 ${r.p50Us.toFixed(0).padStart(5)} µs   p99 ${r.p99Us.toFixed(0).padStart(6)} µs`);
    }

    // --- setup --------------------------------------------------------------------------------
    log(`\ntunnel setup: ${settings.setups} sequential opens (connect, handshake, banner, one echo, close) after ${settings.setupWarmup}`);
    for (const p of paths) {
      const cpu = cpuOf(p);
      let cpu0 = Number.NaN;
      const r = await attempt(p, 'setup', async () => {
        await refill(p, settings.setups + settings.setupWarmup + 10);
        cpu0 = cpu();
        return setup(p.open, settings.setups, settings.setupWarmup);
      });
      if (!r) continue;
      const res = resultOf(p);
      res.setup = r;
      const used = cpu() - cpu0;
      res.setupCpuMsPerTunnel = Number.isFinite(used) ? (used * 1000) / (r.count + settings.setupWarmup) : undefined;
      if (r.failures > 0) res.errors.push(`setup: ${r.failures} failed opens; first: ${r.firstError ?? '?'}`);
      log(`  (${p.key}) ${p.label.padEnd(28)} ${r.perSecond.toFixed(0).padStart(5)}/s   p50 ${r.p50Ms.toFixed(2)} ms   p99 ${r.p99Ms.toFixed(2)} ms${r.failures ? `   ${r.failures} FAILED` : ''}`);
    }

    // --- what the gateway itself said ---------------------------------------------------------
    gatewayMetrics = (await rpc.metrics().catch(() => ''))
      .split('\n')
      .filter((l) => /^oneport_(tunnels_total|connections_total|dials_total|auth_failures_total)\{/.test(l));
    await rpc.stop().catch(() => undefined);
    gatewayLog = summariseGatewayLog(gatewayLogFile(work));
    for (const p of peers) {
      if (p.name === 'haproxy' || p.name === 'websockify') {
        const t = tail(p.logFile, 5);
        if (/error|exception|traceback/i.test(t)) peerInfo[`${p.name}Log`] = t;
      }
    }
  } catch (e) {
    fatal = (e as Error).stack ?? String(e);
    console.error(`bench failed: ${fatal}`);
  } finally {
    await stopAll(peers);
    removeWork();
  }

  if (settings.micro && !fatal) {
    log('\nmicro-benchmarks (ns/op, in this process)');
    micro = await runMicro({ msPerCase: settings.microMsPerCase, log });
  }

  const report = {
    date: startedAt.toISOString(),
    durationSeconds: Math.round((Date.now() - startedAt.getTime()) / 100) / 10,
    node: process.version,
    machine: { ...machine, loadavgBefore: loadBefore, loadavgAfter: os.loadavg() },
    peers: peerInfo,
    settings,
    paths: results,
    ratios: ratios(results),
    gatewayLog,
    gatewayMetrics,
    micro,
    fatal,
  };
  writeFileSync(join(BENCH_DIR, 'results.json'), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(BENCH_DIR, 'RESULTS.md'), renderMarkdown(report));
  writeChart(report);
  log(`\nwrote bench/RESULTS.md, bench/results.json and bench/ratios.svg (${report.durationSeconds} s)`);
  if (fatal) process.exitCode = 1;
}

function dpkgVersion(pkg: string): string | undefined {
  const v = version('dpkg-query', ['-W', '-f=${Version}', pkg]);
  return v ? `${pkg} ${v}` : undefined;
}

// ---------------------------------------------------------------------------------------------
// Ratios and the gateway's own log

type Ratio = number | undefined;
const ratio = (a: number | undefined, b: number | undefined): Ratio => (a !== undefined && b !== undefined && b > 0 && Number.isFinite(a) && Number.isFinite(b) ? a / b : undefined);

interface Comparison {
  readonly name: string;
  readonly throughput: Ratio;
  readonly download: Ratio;
  readonly rttP50: Ratio;
  readonly rttP99: Ratio;
  readonly setupRate: Ratio;
  readonly setupP50: Ratio;
  readonly cpuPerGiB: Ratio;
  readonly downloadCpuPerGiB: Ratio;
  readonly idleKiB: Ratio;
}

function compare(name: string, x: PathResult | undefined, y: PathResult | undefined): Comparison | undefined {
  if (!x || !y) return undefined;
  return {
    name,
    throughput: ratio(x.throughputMBps, y.throughputMBps),
    download: ratio(x.downloadMBps, y.downloadMBps),
    rttP50: ratio(x.latency?.p50Us, y.latency?.p50Us),
    rttP99: ratio(x.latency?.p99Us, y.latency?.p99Us),
    setupRate: ratio(x.setup?.perSecond, y.setup?.perSecond),
    setupP50: ratio(x.setup?.p50Ms, y.setup?.p50Ms),
    cpuPerGiB: ratio(x.cpuSecondsPerGiB, y.cpuSecondsPerGiB),
    downloadCpuPerGiB: ratio(x.downloadCpuSecondsPerGiB, y.downloadCpuSecondsPerGiB),
    idleKiB: ratio(x.idle?.perTunnelKiB, y.idle?.perTunnelKiB),
  };
}

function ratios(results: PathResult[]): Comparison[] {
  const by = (k: string): PathResult | undefined => results.find((r) => r.key === k);
  const out: Array<Comparison | undefined> = [];
  for (const k of ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i']) out.push(compare(`(${k}) ${by(k)?.label ?? ''} vs (a) direct TCP`, by(k), by('a')));
  out.push(compare('(c) oneport CONNECT in TLS vs (e) HAProxy', by('c'), by('e')));
  out.push(compare('(c) oneport CONNECT in TLS vs (i) Node TLS pipe relay', by('c'), by('i')));
  out.push(compare('(i) Node TLS pipe relay vs (e) HAProxy', by('i'), by('e')));
  out.push(compare('(d) oneport WebSocket vs (f) websockify', by('d'), by('f')));
  out.push(compare('(h) oneport RD Gateway (wss) vs (e) HAProxy TLS', by('h'), by('e')));
  out.push(compare('(d) oneport WebSocket vs (e) HAProxy', by('d'), by('e')));
  out.push(compare('(b) oneport CONNECT, clear text vs (g) HAProxy TCP', by('b'), by('g')));
  out.push(compare('(c) oneport CONNECT in TLS vs (b) in clear text', by('c'), by('b')));
  return out.filter((c): c is Comparison => c !== undefined);
}

function summariseGatewayLog(file: string): {
  lines: number;
  tunnels: number;
  byLevel: Record<string, number>;
  closeReasons: Record<string, number>;
  refusals: Record<string, number>;
  problems: string[];
} {
  const byLevel: Record<string, number> = {};
  const closeReasons: Record<string, number> = {};
  const refusals: Record<string, number> = {};
  const problems: string[] = [];
  let lines = 0;
  let tunnels = 0;
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    /* no log */
  }
  for (const line of text.split('\n')) {
    if (!line) continue;
    lines++;
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(line) as Record<string, unknown>;
    } catch {
      problems.push(`not JSON: ${line.slice(0, 160)}`);
      continue;
    }
    const level = String(j.level ?? '?');
    byLevel[level] = (byLevel[level] ?? 0) + 1;
    if (j.event === 'tunnel') {
      tunnels++;
      const k = `${String(j.transport)}: ${String(j.closeReason)}`;
      closeReasons[k] = (closeReasons[k] ?? 0) + 1;
    }
    if (j.event === 'tunnel-refused') {
      const k = `${String(j.transport)}: ${String(j.code)}`;
      refusals[k] = (refusals[k] ?? 0) + 1;
    }
    if ((level === 'warn' || level === 'error' || level === 'fatal') && problems.length < 10) problems.push(line.slice(0, 300));
  }
  return { lines, tunnels, byLevel, closeReasons, refusals, problems };
}

// ---------------------------------------------------------------------------------------------
// RESULTS.md

const dash = '-';
const f0 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? dash : x.toFixed(0));
const f1 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? dash : x.toFixed(1));
const f2 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? dash : x.toFixed(2));
const fx = (x: Ratio): string => (x === undefined || !Number.isFinite(x) ? dash : `${x.toFixed(2)}×`);
const fus = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? dash : x < 100 ? x.toFixed(1) : x.toFixed(0));

function renderMarkdown(r: {
  date: string;
  durationSeconds: number;
  node: string;
  machine: { cpu: string; cores: number; os: string; memoryGiB: number; loadavgBefore: number[]; loadavgAfter: number[] };
  peers: Record<string, string | undefined>;
  settings: typeof settings;
  paths: PathResult[];
  ratios: Comparison[];
  gatewayLog: ReturnType<typeof summariseGatewayLog> | undefined;
  gatewayMetrics: string[];
  micro: MicroResult[];
  fatal: string | undefined;
}): string {
  const s = r.settings;
  const direct = r.paths.find((p) => p.key === 'a');
  const out: string[] = [];
  out.push('# oneport benchmark results', '');
  out.push('Generated by `npm run bench` (bench/run.ts); see bench/README.md for what each number means.', '');
  out.push('![oneport ÷ HAProxy, same run](ratios.svg)', '');
  out.push(`- Date: ${r.date} (run took ${r.durationSeconds} s)`);
  out.push(`- Node: ${r.node}`);
  out.push(`- Machine: ${r.machine.cpu}, ${r.machine.cores} cores, ${r.machine.memoryGiB} GiB, ${r.machine.os}`);
  out.push(`- Load average before / after: ${r.machine.loadavgBefore.map((x) => x.toFixed(2)).join(' ')} / ${r.machine.loadavgAfter.map((x) => x.toFixed(2)).join(' ')}`);
  out.push(`- Peers: ${r.peers.haproxy ?? 'HAProxy not installed'}; ${r.peers.websockify ?? 'websockify not installed'}`);
  out.push(`- Gateway WebSocket unmasking: ${r.peers.gatewayWsUnmask ?? '?'}`);
  out.push(
    `- Settings: throughput ${s.throughputRounds} × ${s.throughputBytes / MiB} MiB each way (median), ${s.chunkBytes / 1024} KiB writes/messages; ` +
      `latency ${s.pings} × ${s.pingBytes} B round trips after ${s.pingWarmup}; setup ${s.setups} sequential tunnels after ${s.setupWarmup}`,
  );
  out.push(
    '- Everything on loopback on this one machine, in separate processes: load generator (this script), backend, gateway or peer. ' +
      'The absolute numbers are noise on a shared 2-core box; read the ratios.',
    '',
  );
  if (r.fatal) out.push('**The run failed:**', '', '```', r.fatal, '```', '');

  out.push('## Results', '');
  out.push(
    '| path | client→console MB/s | × direct | console→client MB/s | × direct | RTT p50 µs | RTT p99 µs | p50 × direct | setups/s | × direct | setup p50 ms | setup p99 ms | relay CPU s/GiB (→console / →client) |',
  );
  out.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const p of r.paths) {
    const isDirect = p.key === 'a';
    const vs = (a: number | undefined, b: number | undefined): string => (isDirect ? (a === undefined ? dash : '1.00×') : fx(ratio(a, b)));
    out.push(
      `| (${p.key}) ${p.label} | ${f0(p.throughputMBps)} | ${vs(p.throughputMBps, direct?.throughputMBps)} | ` +
        `${f0(p.downloadMBps)} | ${vs(p.downloadMBps, direct?.downloadMBps)} | ` +
        `${fus(p.latency?.p50Us)} | ${fus(p.latency?.p99Us)} | ${vs(p.latency?.p50Us, direct?.latency?.p50Us)} | ` +
        `${f0(p.setup?.perSecond)} | ${vs(p.setup?.perSecond, direct?.setup?.perSecond)} | ${f2(p.setup?.p50Ms)} | ${f2(p.setup?.p99Ms)} | ` +
        `${isDirect ? dash : `${f2(p.cpuSecondsPerGiB)} / ${f2(p.downloadCpuSecondsPerGiB)}`} |`,
    );
  }
  out.push('');
  out.push(
    'MB = 10^6 bytes; throughput is the median of the rounds. RTT = one 64-byte message there and back through an open tunnel. ' +
      'Setup = connect + TLS/CONNECT/WebSocket handshake + the console banner + one echo; the rate also includes the close. ' +
      'Relay CPU = user+system CPU of the relaying process tree (the gateway; HAProxy; websockify with its forked children) per GiB moved, during the throughput runs. ' +
      '(g) is an extra reference for (b): HAProxy relaying plain TCP.',
    '',
  );

  out.push('## Side by side (ratios)', '');
  out.push('Throughput and setups/s: higher is better for the first path. RTT, setup latency, CPU and memory: lower is better.', '');
  out.push('| comparison | →console MB/s | →client MB/s | RTT p50 | RTT p99 | setups/s | setup p50 | CPU/GiB →console | CPU/GiB →client | memory per idle tunnel |');
  out.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const c of r.ratios) {
    out.push(
      `| ${c.name} | ${fx(c.throughput)} | ${fx(c.download)} | ${fx(c.rttP50)} | ${fx(c.rttP99)} | ${fx(c.setupRate)} | ${fx(c.setupP50)} | ${fx(c.cpuPerGiB)} | ${fx(c.downloadCpuPerGiB)} | ${fx(c.idleKiB)} |`,
    );
  }
  out.push('');
  const idle = r.paths.filter((p) => p.idle);
  if (idle.length) {
    out.push('## Memory per idle tunnel', '');
    out.push(
      `RSS growth of the relaying process while ${s.idleTunnels} tunnels are open and idle (each up to the console's banner: the TLS client leg and the console leg), divided by the tunnels; ` +
        `${s.idleWarmup} tunnels were opened and closed before the baseline. Target: at most 20 KiB.`,
      '',
    );
    out.push('| path | KiB per tunnel | RSS before MiB | RSS with the tunnels MiB | opened in s |');
    out.push('|---|---:|---:|---:|---:|');
    for (const p of idle) {
      const m = p.idle as IdleRun;
      out.push(`| (${p.key}) ${p.label} | ${f1(m.perTunnelKiB)} | ${f1(m.rssBeforeKiB / 1024)} | ${f1(m.rssAfterKiB / 1024)} | ${f1(m.openSeconds)} |`);
    }
    out.push('');
    const after = r.paths.filter((p) => p.idleAfterTraffic);
    if (after.length) {
      out.push(
        `The same, each tunnel idle after carrying ${s.idleTrafficBytes / 1024} KiB each way (echoed by the console, 64 KiB writes): a session whose user went away. ` +
          'What the relay keeps of the buffers that traffic needed counts here. This run follows the one above in the same relay, so memory a relay pooled ' +
          'there (and kept) serves it too: the last column counts from the first run\'s baseline instead.',
        '',
      );
      out.push('| path | KiB per tunnel | × banner only | RSS before MiB | RSS with the tunnels MiB | KiB per tunnel over the first baseline |');
      out.push('|---|---:|---:|---:|---:|---:|');
      for (const p of after) {
        const m = p.idleAfterTraffic as IdleRun;
        const first = p.idle ? (m.rssAfterKiB - p.idle.rssBeforeKiB) / m.count : undefined;
        out.push(`| (${p.key}) ${p.label} | ${f1(m.perTunnelKiB)} | ${p.idle ? f2(m.perTunnelKiB / p.idle.perTunnelKiB) : dash} | ${f1(m.rssBeforeKiB / 1024)} | ${f1(m.rssAfterKiB / 1024)} | ${f1(first)} |`);
      }
      out.push('');
    }
  }

  out.push('## Details', '');
  out.push('| path | TLS | →console runs MB/s | →client runs MB/s | relay CPU ms per tunnel setup | RTT mean µs | errors |');
  out.push('|---|---|---|---|---:|---:|---|');
  for (const p of r.paths) {
    out.push(
      `| (${p.key}) ${p.label} | ${p.tls ?? dash} | ${p.throughputRuns.map((x) => x.mbPerSecond.toFixed(0)).join(', ') || dash} | ` +
        `${p.downloadRuns.map((x) => x.mbPerSecond.toFixed(0)).join(', ') || dash} | ` +
        `${p.key === 'a' ? dash : f2(p.setupCpuMsPerTunnel)} | ${f1(p.latency?.meanUs)} | ${p.errors.length ? p.errors.join('; ').replace(/\|/g, '/').replace(/\n/g, ' ') : 'none'} |`,
    );
  }
  out.push('');
  if (r.gatewayLog) {
    const g = r.gatewayLog;
    out.push(`Gateway log: ${g.lines} lines, ${g.tunnels} tunnel lines; levels ${JSON.stringify(g.byLevel)}.`);
    out.push(`Tunnel close reasons: ${Object.entries(g.closeReasons).map(([k, v]) => `${k} × ${v}`).join(', ') || 'none'}.`);
    out.push(`Refused tunnels: ${Object.entries(g.refusals).map(([k, v]) => `${k} × ${v}`).join(', ') || 'none'}.`);
    if (g.problems.length) out.push('', 'Warnings and errors in the gateway log:', '', '```', ...g.problems, '```');
    out.push('');
  }
  if (r.gatewayMetrics.length) out.push('Gateway counters at the end:', '', '```', ...r.gatewayMetrics, '```', '');
  for (const [k, v] of Object.entries(r.peers)) if (k.endsWith('Log') && v) out.push(`${k}:`, '', '```', v.trim(), '```', '');

  if (r.micro.length) {
    out.push('## Micro-benchmarks', '');
    out.push('One process, median of batches; `outcome` shows which branch was measured.', '');
    out.push('| group | operation | time/op | ops/s | outcome |');
    out.push('|---|---|---:|---:|---|');
    for (const m of r.micro) {
      out.push(`| ${m.group} | ${m.name} | ${fmtNs(m.nsPerOp)} | ${m.opsPerSecond >= 1e6 ? `${(m.opsPerSecond / 1e6).toFixed(1)} M` : m.opsPerSecond >= 1e3 ? `${(m.opsPerSecond / 1e3).toFixed(1)} k` : m.opsPerSecond.toFixed(1)} | ${m.outcome} |`);
    }
    out.push('');
  }
  return `${out.join('\n')}\n`;
}

await main();
