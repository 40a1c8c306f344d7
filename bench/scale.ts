/**
 * The directory at scale (issue 16): N VMs (and N/10 users, 10 VMs each, spread over 50 nodes)
 * in a real redis-server, then what a node pays for them:
 *
 *  - start-to-ready: `RedisDirectory.open()` (connect, snapshot, mirror loaded), the part of a
 *    node's start that grows with the directory;
 *  - the longest Redis stall other clients see while it loads: a probe client (a process of its
 *    own) sends PING after PING and keeps the worst round trip, and SLOWLOG's longest command;
 *  - the same with `--resyncs` more mirrors loading at once (nodes restarting together, or all
 *    resyncing after a Redis restart), and whether they all converge;
 *  - mirror memory per VM (heap after GC, with --expose-gc);
 *  - a user's desktop list (`vmsForUser`), for a user with 10 VMs and for one with none;
 *  - idle CPU of a node holding the mirror, with the periodic recovery check a cluster node runs
 *    every 500 ms (cluster.ts);
 *  - a failover write of one node's VMs (N/50 of them): time, and feed entries written;
 *  - the embedded directory: one putVm into a file holding min(N, 100k) VMs;
 *  - with `--fleet PxM`: P processes holding M mirrors each (a cluster of P x M nodes, a process
 *    per few nodes to fit in memory), then a Redis restart (saved first, so it comes back with the
 *    directory and a new run_id): every mirror resyncs at once; time until all converged, SLOWLOG's
 *    longest command and the worst PING meanwhile.
 *
 *  - with `--ab <checkout>`: only the start, K times (`--ab-runs`, default 3) in turns with the
 *    code of another checkout (e.g. `git worktree add /tmp/base main`), each start in a fresh
 *    process of its own: wall time, CPU (the process's, and its main thread's alone), the main
 *    thread's GC, mirror heap and SLOWLOG (longest, and commands over 10 ms) of both, under the
 *    same load.
 *  - with `--redis-cpu C`: redis-server pinned to CPU C and this script (its children too) to the
 *    others, as when Redis has a host of its own: SLOWLOG then counts a command's own time, not the
 *    time Redis waited for a core the loading mirrors held (SLOWLOG times a command by the clock).
 *  - with `--serve 1,2`: only whole `oneport serve` nodes (built: dist/) joining the directory,
 *    one per number of workers in turn (bench/serve-start.ts): spawn to `listening` (the primary's
 *    mirror and every worker's copy loaded), and the CPU of the process tree by then.
 *
 *   npm run bench:scale -- 100000 [--resyncs 3] [--idle-ms 5000] [--fleet 5x10] [--ab <dir>] [--serve 1,2] [--redis-cpu 1]
 *
 * Results: bench/scale-results.json (keyed by N and the git revision), a table on stdout.
 */
import { type ChildProcess, execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PerformanceObserver } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { startRedis } from '../test/helpers/redis.js';
import { RedisDirectory } from '../gateway/directory/redis.js';
import { MemoryDirectory, newSigningKey } from '../gateway/directory/memory.js';
import { type Directory, type UserRecord, type VmRecord, vmsForUser } from '../gateway/directory/directory.js';
import { type ServeStart, buildForServe, serveStart } from './serve-start.js';

const args = process.argv.slice(2);
const flag = (name: string, def: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const N = Number(args.find((a) => /^\d+$/.test(a)) ?? 100_000);
const RESYNCS = flag('resyncs', 3);
/** `--fleet PxM`: P processes holding M mirrors each, all resyncing after a Redis restart. */
const FLEET = ((): { procs: number; perProc: number } | undefined => {
  const i = args.indexOf('--fleet');
  const m = i >= 0 ? /^(\d+)x(\d+)$/.exec(args[i + 1] ?? '') : null;
  return m ? { procs: Number(m[1]), perProc: Number(m[2]) } : undefined;
})();
const IDLE_MS = flag('idle-ms', 5_000);
const AB = ((): string | undefined => {
  const i = args.indexOf('--ab');
  return i >= 0 ? args[i + 1] : undefined;
})();
const AB_RUNS = flag('ab-runs', 3);
const SERVE = ((): number[] | undefined => {
  const i = args.indexOf('--serve');
  return i >= 0 ? (args[i + 1] ?? '1').split(',').map(Number).filter((n) => Number.isInteger(n) && n > 0) : undefined;
})();
/** `--redis-cpu C`: Redis alone on CPU C, everything else on the other CPUs. */
const REDIS_CPU = ((): string | undefined => {
  const i = args.indexOf('--redis-cpu');
  return i >= 0 ? args[i + 1] : undefined;
})();
const NODES = 50;
const USERS = Math.max(1, Math.floor(N / 10));
const PREFIX = 'oneport:{dir}:';

const here = fileURLToPath(new URL('.', import.meta.url));
const teardowns: Array<() => unknown> = [];
const log = (s: string): void => console.log(s);

function vmRecord(i: number): VmRecord {
  return {
    name: `vm-${i}.desk`,
    node: `node-${i % NODES}`,
    replica: `node-${(i + 1) % NODES}`,
    state: 'running',
    epoch: 0,
    endpoints: [{ protocol: 'vnc', host: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 5900, publishedPort: 5900 }],
    users: [`user-${Math.floor(i / 10) % USERS}`],
    groups: [],
  };
}
function userRecord(i: number): UserRecord {
  return { name: `user-${i}`, passwordHash: 'scrypt$bench', roles: ['user'], groups: [], sessionsNotBefore: 0 };
}

/**
 * The PING loop runs in a child process of its own: in this process it would also measure this
 * event loop (a mirror parsing its pages), not Redis.
 */
class Prober {
  private readonly child: ChildProcess;
  constructor(port: number) {
    this.child = fork(fileURLToPath(import.meta.url), ['--probe', String(port)], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    teardowns.push(() => this.child.kill());
  }
  async ready(): Promise<void> {
    await once(this.child, 'message');
  }
  /** The worst round trip since the last call. */
  async take(): Promise<{ maxPingMs: number; pings: number }> {
    this.child.send('take');
    const [m] = (await once(this.child, 'message')) as [{ maxPingMs: number; pings: number }];
    return m;
  }
}

async function probeChild(port: number): Promise<void> {
  const redis = new Redis({ port, host: '127.0.0.1' });
  redis.on('error', () => {});
  let maxPingMs = 0;
  let pings = 0;
  process.on('message', () => {
    process.send!({ maxPingMs, pings });
    maxPingMs = 0;
    pings = 0;
  });
  process.on('disconnect', () => process.exit(0));
  await redis.ping();
  process.send!('ready');
  for (;;) {
    const t0 = performance.now();
    await redis.ping();
    maxPingMs = Math.max(maxPingMs, performance.now() - t0);
    pings++;
    await new Promise((r) => setTimeout(r, 1));
  }
}

let prober: Prober;
async function probing<T>(_redis: Redis, fn: () => Promise<T>): Promise<{ value: T | Error; ms: number; maxPingMs: number; pings: number }> {
  await prober.take();
  const t0 = performance.now();
  let value: T | Error;
  try {
    value = await fn();
  } catch (err) {
    value = err as Error;
  }
  const ms = performance.now() - t0;
  return { value, ms, ...(await prober.take()) };
}

/** Commands Redis ran, and how many took over 1 ms and over 8.5 ms. */
interface CommandSpread {
  readonly calls: number;
  readonly over1ms: number;
  readonly over8ms: number;
}

/**
 * Redis's longest command since the last call (SLOWLOG), and how the commands' times spread
 * (LATENCY HISTOGRAM, every command): SLOWLOG times a command by the clock, so one preempted (or
 * its virtual CPU stalled) counts as long. The share over 1 ms tells long commands from rare stalls.
 * Resets both.
 */
async function slowlogMaxMs(redis: Redis): Promise<{ ms: number; cmd: string; commands: CommandSpread; text: string }> {
  const entries = (await redis.call('SLOWLOG', 'GET', '128')) as Array<[number, number, number, string[]]>;
  let best = { ms: 0, cmd: '-' };
  for (const e of entries) if (e[2] / 1000 > best.ms) best = { ms: e[2] / 1000, cmd: (e[3] ?? []).slice(0, 2).join(' ').split('\n')[0]!.slice(0, 40) };
  // [name, ['calls', n, 'histogram_usec', [bucket, calls at most that long, ...]], ...]; buckets are powers of 2 (1056, 8454 µs...).
  const hist = (await redis.call('LATENCY', 'HISTOGRAM')) as Array<string | Array<string | number | number[]>>;
  let calls = 0;
  let over1ms = 0;
  let over8ms = 0;
  for (let i = 1; i < hist.length; i += 2) {
    const h = hist[i] as Array<string | number | number[]>;
    const n = Number(h[h.indexOf('calls') + 1]);
    const buckets = h[h.indexOf('histogram_usec') + 1] as number[];
    const atMost = (us: number): number => {
      let c = 0;
      for (let j = 0; j < buckets.length; j += 2) if (buckets[j]! <= us) c = buckets[j + 1]!;
      return c;
    };
    calls += n;
    over1ms += n - atMost(1100);
    over8ms += n - atMost(8500);
  }
  await redis.call('SLOWLOG', 'RESET');
  await redis.call('CONFIG', 'RESETSTAT');
  const text = `slowlog max ${best.ms.toFixed(1)} ms (${best.cmd}); ${calls} commands, ${over1ms} over 1 ms, ${over8ms} over 8.5 ms`;
  return { ...best, commands: { calls, over1ms, over8ms }, text };
}

/**
 * What the machine alone does to a command's clock time: 4,000 runs of the same small Lua loop
 * (a few hundred µs, like one HSCAN page), nothing else asked of Redis meanwhile.
 */
async function stallReference(redis: Redis): Promise<{ calls: number; meanUs: number; over1ms: number; maxMs: number }> {
  await slowlogMaxMs(redis);
  const script = 'local x = 0 for i = 1, 60000 do x = x + i end return x';
  for (let i = 0; i < 4000; i += 100) await Promise.all(Array.from({ length: 100 }, () => redis.eval(script, 0)));
  const stats = await redis.info('commandstats');
  const s = await slowlogMaxMs(redis);
  const meanUs = Math.round(Number((/cmdstat_eval:.*usec_per_call=([\d.]+)/.exec(stats) ?? [])[1] ?? NaN));
  return { calls: 4000, meanUs, over1ms: s.commands.over1ms, maxMs: +s.ms.toFixed(1) };
}

function heapMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

/** Starts counting this process's CPU and GC time; the function returned stops and reads them (ms). */
function costOf(): () => { cpuMs: number; gcMs: number } {
  let gcMs = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcMs += e.duration;
  });
  obs.observe({ entryTypes: ['gc'] });
  const c0 = process.cpuUsage();
  return () => {
    const cpu = process.cpuUsage(c0);
    obs.disconnect();
    return { cpuMs: Math.round((cpu.user + cpu.system) / 1000), gcMs: Math.round(gcMs) };
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

/** What cluster.ts does every recoveryProbeMs: this node's VMs that are not running. */
function recoveryCandidates(dir: Directory, node: string): number {
  const d = dir as Directory & { unsettledVms?(node: string): VmRecord[] };
  // Feature-detected so that the same script measures the code from before the index.
  if (d.unsettledVms) return d.unsettledVms(node).length;
  let n = 0;
  for (const vm of dir.listVms()) if (vm.node === node && vm.state !== 'running' && vm.state !== 'migrating') n++;
  return n;
}

/** Redis (every thread) on `cpu`, this process (every thread, and children forked later) on the rest. */
function pinApart(redisPid: number | undefined, cpu: string): void {
  if (redisPid === undefined) throw new Error('--redis-cpu: redis-server has no pid');
  const all = Array.from({ length: availableParallelism() }, (_, i) => i);
  const rest = all.filter((c) => String(c) !== cpu);
  if (rest.length === all.length || rest.length === 0) throw new Error(`--redis-cpu ${cpu}: not one of CPUs 0-${all.length - 1}, or no CPU left for the rest`);
  execFileSync('taskset', ['-a', '-p', '-c', cpu, String(redisPid)], { stdio: 'ignore' });
  execFileSync('taskset', ['-a', '-p', '-c', rest.join(','), String(process.pid)], { stdio: 'ignore' });
  log(`  redis-server alone on CPU ${cpu}; this script and its children on CPU ${rest.join(',')}`);
}

async function main(): Promise<void> {
  const rev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: here }).toString().trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--', '../gateway'], { cwd: here }).toString().trim() !== '';
  log(`bench:scale N=${N} VMs, ${USERS} users, ${NODES} nodes, ${RESYNCS} concurrent resyncs, rev ${rev}${dirty ? '+dirty' : ''}`);
  // The SLOWLOG threshold as an argument, so that it holds after the --fleet restart too.
  const server = await startRedis({ teardown: (fn) => teardowns.push(fn) }, { startTimeoutMs: 60_000, args: ['--slowlog-log-slower-than', '1000'] });
  if (REDIS_CPU !== undefined) pinApart(server.pid, REDIS_CPU);
  const admin = new Redis(server.url, { lazyConnect: false });
  admin.on('error', () => {});
  const probe = new Redis(server.url, { lazyConnect: false });
  probe.on('error', () => {});
  teardowns.push(() => admin.disconnect(), () => probe.disconnect());
  prober = new Prober(server.port);
  await prober.ready();

  // A fresh directory publishes its key ring (version 1); then the bulk load, straight into the
  // hashes (the admin API adds ~4,500 VMs/s: minutes at 1M), and the version moved on.
  const seedDir = await RedisDirectory.open({ redis: server.url, prefix: PREFIX });
  await seedDir.close();
  const t0 = performance.now();
  for (let i = 0; i < USERS; i += 2000) {
    const p = admin.pipeline();
    for (let j = i; j < Math.min(USERS, i + 2000); j++) p.hset(`${PREFIX}users`, `user-${j}`, JSON.stringify(userRecord(j)));
    await p.exec();
  }
  for (let i = 0; i < N; i += 2000) {
    const p = admin.pipeline();
    const flat: string[] = [];
    for (let j = i; j < Math.min(N, i + 2000); j++) flat.push(`vm-${j}.desk`, JSON.stringify(vmRecord(j)));
    p.hset(`${PREFIX}vms`, ...flat);
    await p.exec();
  }
  await admin.set(`${PREFIX}version`, '2');
  await admin.xadd(`${PREFIX}changes`, '*', 'v', '2', 'k', 'user', 'n', 'user-0', 'd', JSON.stringify(userRecord(0)));
  log(`  loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; redis used_memory ${((await admin.info('memory')).match(/used_memory_human:(\S+)/) ?? [])[1]}`);
  await slowlogMaxMs(admin);

  if (SERVE) {
    buildForServe();
    const starts: ServeStart[] = [];
    for (const w of SERVE) {
      const r = await serveStart(server.url, PREFIX, w);
      starts.push(r);
      log(`  serve with ${w} worker(s): listening after ${r.readyMs} ms, process tree CPU ${r.cpuS} s (load ${r.load})`);
    }
    writeResult({ n: N, users: USERS, rev: `${rev}${dirty ? '+dirty' : ''}`, at: new Date().toISOString(), serve: starts });
    return;
  }
  if (AB) {
    writeResult({ n: N, users: USERS, rev: `${rev}${dirty ? '+dirty' : ''}`, at: new Date().toISOString(), ab: await startAb(server.url, AB, admin) });
    return;
  }

  const result: Record<string, unknown> = { n: N, users: USERS, nodes: NODES, redisCpu: REDIS_CPU, rev: `${rev}${dirty ? '+dirty' : ''}`, at: new Date().toISOString(), load: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') };

  // 0. The machine's own stalls, for reading SLOWLOG below: the same fixed work, again and again.
  const fixed = await stallReference(admin);
  result.stallReference = fixed;
  log(`  stall reference: ${fixed.calls} x the same ~${fixed.meanUs} µs of Redis work alone: ${fixed.over1ms} over 1 ms, longest ${fixed.maxMs} ms`);

  // 1. One node starts.
  const heap0 = heapMiB();
  const startCost = costOf();
  const start = await probing(probe, () => RedisDirectory.open({ redis: server.url, prefix: PREFIX }));
  const { cpuMs: startCpuMs, gcMs } = startCost();
  const slowStart = await slowlogMaxMs(admin);
  const ok = !(start.value instanceof Error);
  result.start = { ok, error: ok ? undefined : (start.value as Error).message, readyMs: Math.round(start.ms), cpuMs: startCpuMs, gcMs: Math.round(gcMs), maxPingMs: +start.maxPingMs.toFixed(1), pings: start.pings, slowlogMaxMs: +slowStart.ms.toFixed(1), slowlogCmd: slowStart.cmd, commands: slowStart.commands };
  log(`  start: ${ok ? 'ready' : `FAILED (${(start.value as Error).message})`} in ${Math.round(start.ms)} ms (CPU ${startCpuMs} ms, GC ${Math.round(gcMs)} ms); worst PING ${start.maxPingMs.toFixed(1)} ms; ${slowStart.text}`);
  if (!ok) {
    writeResult(result);
    return;
  }
  const dir = start.value as RedisDirectory;
  teardowns.push(() => dir.close());
  const heap1 = heapMiB();
  const bytesPerVm = ((heap1 - heap0) * 2 ** 20) / (N + USERS / 10);
  result.memory = { heapMiB: +(heap1 - heap0).toFixed(1), bytesPerVm: Math.round(bytesPerVm), gcExposed: typeof (globalThis as { gc?: unknown }).gc === 'function' };
  log(`  mirror heap: ${(heap1 - heap0).toFixed(1)} MiB, ~${Math.round(bytesPerVm)} B per VM (users counted as 1/10 VM each)`);

  // 2. A user's desktop list.
  const withVms = dir.getUser('user-7')!;
  const without: UserRecord = { ...userRecord(0), name: 'nobody' };
  const timeList = (u: UserRecord): { ms: number; count: number } => {
    const xs: number[] = [];
    let count = 0;
    for (let i = 0; i < 15; i++) {
      const a = performance.now();
      count = vmsForUser(dir, u).length;
      xs.push(performance.now() - a);
    }
    return { ms: +median(xs).toFixed(3), count };
  };
  const l1 = timeList(withVms);
  const l0 = timeList(without);
  result.desktopList = { tenVmsMs: l1.ms, tenVmsCount: l1.count, noneMs: l0.ms };
  log(`  desktop list: ${l1.ms} ms (user with ${l1.count} VMs), ${l0.ms} ms (user with none)`);

  // 3. Idle CPU with the 500 ms recovery check.
  const cpu0 = process.cpuUsage();
  const w0 = performance.now();
  const passes: number[] = [];
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const a = performance.now();
      recoveryCandidates(dir, 'node-3');
      passes.push(performance.now() - a);
    }, 500);
    setTimeout(() => {
      clearInterval(timer);
      resolve();
    }, IDLE_MS);
  });
  const cpu = process.cpuUsage(cpu0);
  const idlePct = ((cpu.user + cpu.system) / 1000 / (performance.now() - w0)) * 100;
  result.idle = { cpuPct: +idlePct.toFixed(2), passMs: +median(passes).toFixed(3) };
  log(`  idle: ${idlePct.toFixed(2)} % of a core; recovery check ${median(passes).toFixed(3)} ms per pass`);

  // 4. More nodes loading at once (restarts, or every node after a Redis restart).
  if (RESYNCS > 0) {
    const many = await probing(probe, () => Promise.allSettled(Array.from({ length: RESYNCS }, () => RedisDirectory.open({ redis: server.url, prefix: PREFIX }))));
    const slow = await slowlogMaxMs(admin);
    const settled = many.value as PromiseSettledResult<RedisDirectory>[];
    const ready = settled.filter((s) => s.status === 'fulfilled').map((s) => (s as PromiseFulfilledResult<RedisDirectory>).value);
    const failed = settled.filter((s) => s.status === 'rejected').map((s) => String((s as PromiseRejectedResult).reason?.message));
    const converged = ready.every((d) => d.version() === dir.version() && d.listVms().length === N);
    result.resyncs = { count: RESYNCS, ready: ready.length, converged, failed: failed.slice(0, 1), allReadyMs: Math.round(many.ms), maxPingMs: +many.maxPingMs.toFixed(1), slowlogMaxMs: +slow.ms.toFixed(1), slowlogCmd: slow.cmd, commands: slow.commands };
    log(`  ${RESYNCS} at once: ${ready.length} ready${failed.length ? `, ${failed.length} failed (${failed[0]})` : ''}, converged ${converged}, in ${Math.round(many.ms)} ms; worst PING ${many.maxPingMs.toFixed(1)} ms; ${slow.text}`);
    await Promise.all(ready.map((d) => d.close()));
  }

  // 5. Failover of one node's VMs (N/50), the way cluster.ts writes it.
  {
    const victims = dir.vmsOnNode('node-0');
    const xlen0 = Number(await admin.xlen(`${PREFIX}changes`));
    const r = await probing(probe, async () => {
      // As cluster.ts writes it: the whole list in one putVms (PUT_VMS_MAX VMs a script).
      await dir.putVms(victims.map((vm) => ({ ...vm, node: vm.replica!, replica: vm.node, state: 'recovering' as const, epoch: vm.epoch + 1 })), victims.map((vm) => vm.epoch));
    });
    const xlen1 = Number(await admin.xlen(`${PREFIX}changes`));
    const slow = await slowlogMaxMs(admin);
    result.failover = { vms: victims.length, ms: Math.round(r.ms), feedEntries: xlen1 - xlen0, maxPingMs: +r.maxPingMs.toFixed(1), slowlogMaxMs: +slow.ms.toFixed(1), commands: slow.commands, error: r.value instanceof Error ? r.value.message : undefined };
    log(`  failover of ${victims.length} VMs: ${Math.round(r.ms)} ms, ${xlen1 - xlen0} feed entries (feed cap 10000, approximate); worst PING ${r.maxPingMs.toFixed(1)} ms`);
  }

  // 6. A fleet of mirrors resyncing at once after a Redis restart.
  if (FLEET) result.fleet = await fleet(server, admin, dir);

  // 7. The embedded directory: one change at min(N, 100k) VMs.
  {
    const m = Math.min(N, 100_000);
    const tmp = mkdtempSync(join(tmpdir(), 'oneport-scale-'));
    teardowns.push(() => rmSync(tmp, { recursive: true, force: true }));
    const file = join(tmp, 'directory.json');
    // The file as a node that ran for a while holds it (format 1, one JSON document).
    writeFileSync(file, JSON.stringify({ format: 'oneport-directory/1', version: m, users: [], vms: Array.from({ length: m }, (_, i) => vmRecord(i)), keys: { current: newSigningKey(1), previous: [] } }));
    const reopen = performance.now();
    const mem2 = new MemoryDirectory(file);
    const openMs = performance.now() - reopen;
    const xs: number[] = [];
    let maxLag = 0;
    for (let i = 0; i < 10; i++) {
      const vm = mem2.getVm(`vm-${i}.desk`)!;
      let lag = 0;
      const tick = performance.now();
      const lagTimer = setInterval(() => {
        lag = Math.max(lag, performance.now() - tick - 1);
      }, 1);
      const a = performance.now();
      await mem2.putVm({ ...vm, epoch: vm.epoch + 1 });
      xs.push(performance.now() - a);
      clearInterval(lagTimer);
      maxLag = Math.max(maxLag, lag);
    }
    await mem2.close();
    result.embedded = { vms: m, putMs: +median(xs).toFixed(2), openMs: Math.round(openMs), fileMiB: +(readFileSync(file).length / 2 ** 20).toFixed(1) };
    log(`  embedded (${m} VMs): putVm ${median(xs).toFixed(2)} ms median; reopen ${Math.round(openMs)} ms`);
  }
  writeResult(result);
}

interface OpenFigures {
  readonly ms: number;
  /** CPU of the whole process (every thread: a scan thread's too), and of its main thread alone. */
  readonly cpuMs: number;
  readonly mainCpuMs: number;
  /** GC pauses of the main thread. */
  readonly gcMs: number;
  readonly heapMiB: number;
  readonly load: string;
  /** SLOWLOG during the start: its longest command, and how many took over 10 ms. */
  readonly slowlogMaxMs?: number;
  readonly slowlogOver10?: number;
}

/** CPU time of the calling thread so far, in ms (Linux: /proc/thread-self/stat, 10 ms ticks). */
function threadCpuMs(): number {
  const stat = readFileSync('/proc/thread-self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** --ab: one start in a process of its own, with `code`'s RedisDirectory (a checkout's root). */
async function openChild(url: string, code: string): Promise<void> {
  const { RedisDirectory: Dir } = (await import(join(code, 'gateway/directory/redis.ts'))) as { RedisDirectory: typeof RedisDirectory };
  const heap0 = heapMiB();
  const cost = costOf();
  const main0 = threadCpuMs();
  const t0 = performance.now();
  const dir = await Dir.open({ redis: url, prefix: PREFIX });
  const ms = performance.now() - t0;
  const { cpuMs, gcMs } = cost();
  const figures: OpenFigures = { ms: Math.round(ms), cpuMs, mainCpuMs: threadCpuMs() - main0, gcMs, heapMiB: Math.round(heapMiB() - heap0), load: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') };
  process.send!(figures);
  await dir.close();
  process.disconnect();
}

async function startAb(url: string, base: string, admin: Redis): Promise<Record<string, OpenFigures[]>> {
  const codes: Record<string, string> = { base, this: join(here, '..') };
  const out: Record<string, OpenFigures[]> = { base: [], this: [] };
  for (let i = 0; i < AB_RUNS; i++) {
    for (const which of ['base', 'this'] as const) {
      const child = fork(fileURLToPath(import.meta.url), ['--open-child', url, codes[which]!], { execArgv: ['--import', 'tsx', '--expose-gc', '--max-old-space-size=8192'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      teardowns.push(() => child.kill());
      const [opened] = (await once(child, 'message')) as [OpenFigures];
      await once(child, 'exit');
      const slow = (await admin.call('SLOWLOG', 'GET', '128')) as Array<[number, number, number]>;
      await admin.call('SLOWLOG', 'RESET');
      const f: OpenFigures = { ...opened, slowlogMaxMs: Math.max(0, ...slow.map((e) => e[2] / 1000)), slowlogOver10: slow.filter((e) => e[2] > 10_000).length };
      out[which]!.push(f);
      log(`  start (${which}): ${f.ms} ms, CPU ${f.cpuMs} ms (main thread ${f.mainCpuMs} ms), GC ${f.gcMs} ms, mirror heap ${f.heapMiB} MiB; slowlog max ${f.slowlogMaxMs!.toFixed(1)} ms, ${f.slowlogOver10} over 10 ms; load ${f.load}`);
    }
  }
  const med = (which: string, k: keyof OpenFigures): number => median(out[which]!.map((f) => Number(f[k])));
  for (const k of ['ms', 'cpuMs', 'mainCpuMs', 'gcMs', 'heapMiB', 'slowlogMaxMs'] as const) log(`  median ${k}: base ${med('base', k)}, this ${med('this', k)} (${(med('this', k) / med('base', k)).toFixed(2)}x)`);
  return out;
}

interface FleetStatus {
  readonly mirrors: number;
  /** Mirrors that resynced since 'arm', and the slowest one's time since then. */
  readonly resynced: number;
  readonly lastResyncMs: number;
  readonly reasons: string[];
  readonly versions: number[];
  /** Heap of the process when armed (after a GC) and the most seen since (sampled every 20 ms). */
  readonly heapArmedMiB: number;
  readonly heapPeakMiB: number;
  /** VMs in the first mirror (a full listVms parses every record: one per process). */
  readonly vms?: number;
}

/** One process of the fleet: M mirrors, opened at once, reporting their resyncs. */
class FleetProcess {
  private readonly child: ChildProcess;
  constructor(url: string, perProc: number) {
    this.child = fork(fileURLToPath(import.meta.url), ['--mirrors', url, String(perProc)], { execArgv: ['--import', 'tsx', '--expose-gc', '--max-old-space-size=8192'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    teardowns.push(() => this.child.kill());
  }
  /** Resolves once the process can take commands. */
  async up(): Promise<void> {
    await once(this.child, 'message');
  }
  async ask<T>(cmd: string): Promise<T> {
    this.child.send(cmd);
    const [m] = (await once(this.child, 'message')) as [T];
    return m;
  }
}

async function mirrorsChild(url: string, count: number): Promise<void> {
  const dirs: RedisDirectory[] = [];
  let armedAt = 0;
  let heapArmed = 0;
  let heapPeak = 0;
  /** Per mirror: ms from 'arm' to its latest resync, and why. */
  const resyncs = new Map<number, { ms: number; reason: string }>();
  process.on('disconnect', () => process.exit(0));
  process.on('message', (cmd: string) => {
    void (async () => {
      if (cmd === 'open') {
        const t0 = performance.now();
        const settled = await Promise.allSettled(Array.from({ length: count }, () => RedisDirectory.open({ redis: url, prefix: PREFIX })));
        for (const s of settled) {
          if (s.status !== 'fulfilled') continue;
          const i = dirs.push(s.value) - 1;
          s.value.on('resync', (ev: { reason: string }) => {
            if (armedAt > 0) resyncs.set(i, { ms: performance.now() - armedAt, reason: ev.reason });
          });
        }
        const failed = settled.filter((s) => s.status === 'rejected').map((s) => String((s as PromiseRejectedResult).reason?.message));
        process.send!({ ready: dirs.length, failed, ms: Math.round(performance.now() - t0) });
      } else if (cmd === 'arm') {
        heapArmed = heapMiB();
        heapPeak = heapArmed;
        setInterval(() => {
          heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed / 2 ** 20);
        }, 20).unref();
        armedAt = performance.now();
        resyncs.clear();
        process.send!('armed');
      } else if (cmd === 'status' || cmd === 'final') {
        const status: FleetStatus = {
          mirrors: dirs.length,
          resynced: resyncs.size,
          lastResyncMs: Math.round(Math.max(0, ...[...resyncs.values()].map((r) => r.ms))),
          reasons: [...new Set([...resyncs.values()].map((r) => r.reason))],
          versions: dirs.map((d) => d.version()),
          heapArmedMiB: Math.round(heapArmed),
          heapPeakMiB: Math.round(heapPeak),
          ...(cmd === 'final' ? { vms: dirs[0]?.listVms().length ?? 0 } : {}),
        };
        process.send!(status);
      }
    })();
  });
  process.send!('up');
}

/** --fleet: P x M mirrors load, Redis restarts (with its data), all resync at once. */
async function fleet(server: Awaited<ReturnType<typeof startRedis>>, admin: Redis, dir: RedisDirectory): Promise<Record<string, unknown>> {
  const { procs, perProc } = FLEET!;
  const total = procs * perProc;
  const children = Array.from({ length: procs }, () => new FleetProcess(server.url, perProc));
  await Promise.all(children.map((c) => c.up()));
  // Every mirror loads (P processes, M at once in each): a cluster starting together.
  await slowlogMaxMs(admin);
  const opened = await probing(admin, () => Promise.all(children.map((c) => c.ask<{ ready: number; failed: string[]; ms: number }>('open'))));
  const openSlow = await slowlogMaxMs(admin);
  const loaded = opened.value instanceof Error ? [] : opened.value;
  const ready = loaded.reduce((n, r) => n + r.ready, 0);
  log(`  fleet: ${ready} of ${total} mirrors (${procs} processes x ${perProc}) loaded at once in ${Math.round(opened.ms)} ms; worst PING ${opened.maxPingMs.toFixed(1)} ms; ${openSlow.text}${loaded.some((r) => r.failed.length) ? `; failed: ${loaded.flatMap((r) => r.failed)[0]}` : ''}`);

  // Redis restarts with its data (a new run_id): every mirror, this process's too, resyncs.
  await admin.call('SAVE');
  const version = dir.version();
  await Promise.all(children.map((c) => c.ask<string>('arm')));
  let ownAt = Number.NaN;
  dir.once('resync', () => {
    ownAt = performance.now();
  });
  await server.restart();
  if (REDIS_CPU !== undefined) pinApart(server.pid, REDIS_CPU);
  const back = performance.now();
  await prober.take();
  let statuses: FleetStatus[] = [];
  for (;;) {
    statuses = await Promise.all(children.map((c) => c.ask<FleetStatus>('status')));
    const done = statuses.every((s) => s.resynced >= s.mirrors && s.versions.every((v) => v === version));
    if (done || performance.now() - back > 600_000) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const allMs = performance.now() - back;
  const ping = await prober.take();
  const slow = await slowlogMaxMs(admin);
  const ownMs = ownAt - back;
  const finals = await Promise.all(children.map((c) => c.ask<FleetStatus>('final')));
  const converged = finals.every((s) => s.versions.every((v) => v === version) && s.vms === N) && dir.listVms().length === N;
  const resynced = finals.reduce((n, s) => n + s.resynced, 0);
  const reasons = [...new Set(finals.flatMap((s) => s.reasons))];
  const armed = finals.reduce((n, s) => n + s.heapArmedMiB, 0);
  const peak = finals.reduce((n, s) => n + s.heapPeakMiB, 0);
  log(`  fleet after a Redis restart: ${resynced} of ${ready} mirrors resynced (${reasons.join(', ')}), converged ${converged}, all in ${Math.round(allMs)} ms after Redis was back (this process's own: ${Math.round(ownMs)} ms); worst PING ${ping.maxPingMs.toFixed(1)} ms; ${slow.text}; fleet heap ${armed} MiB before, ${peak} MiB at most during the resync (${(peak / armed).toFixed(2)}x)`);
  return {
    procs,
    perProc,
    load: { ready, allReadyMs: Math.round(opened.ms), maxPingMs: +opened.maxPingMs.toFixed(1), slowlogMaxMs: +openSlow.ms.toFixed(1), commands: openSlow.commands },
    restart: { resynced, converged, reasons, allMs: Math.round(allMs), ownMs: Math.round(ownMs), heapArmedMiB: armed, heapPeakMiB: peak, maxPingMs: +ping.maxPingMs.toFixed(1), slowlogMaxMs: +slow.ms.toFixed(1), slowlogCmd: slow.cmd, commands: slow.commands },
  };
}

function writeResult(result: Record<string, unknown>): void {
  const file = join(here, 'scale-results.json');
  const all = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as unknown[]) : [];
  all.push(result);
  writeFileSync(file, `${JSON.stringify(all, null, 2)}\n`);
  log(`  -> ${file}`);
}

const probeAt = args.indexOf('--probe');
const mirrorsAt = args.indexOf('--mirrors');
const openAt = args.indexOf('--open-child');
(probeAt >= 0
  ? probeChild(Number(args[probeAt + 1]))
  : mirrorsAt >= 0
    ? mirrorsChild(args[mirrorsAt + 1]!, Number(args[mirrorsAt + 2]))
    : openAt >= 0
      ? openChild(args[openAt + 1]!, args[openAt + 2]!)
      : main())
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => {});
  });
