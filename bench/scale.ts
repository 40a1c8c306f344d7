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
 *  - the embedded directory: one putVm into a file holding min(N, 100k) VMs.
 *
 *   npm run bench:scale -- 100000 [--resyncs 3] [--idle-ms 5000]
 *
 * Results: bench/scale-results.json (keyed by N and the git revision), a table on stdout.
 */
import { type ChildProcess, execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { startRedis } from '../test/helpers/redis.js';
import { RedisDirectory } from '../gateway/directory/redis.js';
import { MemoryDirectory, newSigningKey } from '../gateway/directory/memory.js';
import { type Directory, type UserRecord, type VmRecord, vmsForUser } from '../gateway/directory/directory.js';

const args = process.argv.slice(2);
const flag = (name: string, def: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const N = Number(args.find((a) => /^\d+$/.test(a)) ?? 100_000);
const RESYNCS = flag('resyncs', 3);
const IDLE_MS = flag('idle-ms', 5_000);
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

async function slowlogMaxMs(redis: Redis): Promise<{ ms: number; cmd: string }> {
  const entries = (await redis.call('SLOWLOG', 'GET', '128')) as Array<[number, number, number, string[]]>;
  let best = { ms: 0, cmd: '-' };
  for (const e of entries) if (e[2] / 1000 > best.ms) best = { ms: e[2] / 1000, cmd: (e[3] ?? []).slice(0, 2).join(' ').split('\n')[0]!.slice(0, 40) };
  await redis.call('SLOWLOG', 'RESET');
  return best;
}

function heapMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed / 2 ** 20;
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

async function main(): Promise<void> {
  const rev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: here }).toString().trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--', '../gateway'], { cwd: here }).toString().trim() !== '';
  log(`bench:scale N=${N} VMs, ${USERS} users, ${NODES} nodes, ${RESYNCS} concurrent resyncs, rev ${rev}${dirty ? '+dirty' : ''}`);
  const server = await startRedis({ teardown: (fn) => teardowns.push(fn) }, { startTimeoutMs: 20_000 });
  const admin = new Redis(server.url, { lazyConnect: false });
  const probe = new Redis(server.url, { lazyConnect: false });
  teardowns.push(() => admin.disconnect(), () => probe.disconnect());
  await admin.call('CONFIG', 'SET', 'slowlog-log-slower-than', '1000');
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

  const result: Record<string, unknown> = { n: N, users: USERS, nodes: NODES, rev: `${rev}${dirty ? '+dirty' : ''}`, at: new Date().toISOString(), load: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') };

  // 1. One node starts.
  const heap0 = heapMiB();
  const start = await probing(probe, () => RedisDirectory.open({ redis: server.url, prefix: PREFIX }));
  const slowStart = await slowlogMaxMs(admin);
  const ok = !(start.value instanceof Error);
  result.start = { ok, error: ok ? undefined : (start.value as Error).message, readyMs: Math.round(start.ms), maxPingMs: +start.maxPingMs.toFixed(1), pings: start.pings, slowlogMaxMs: +slowStart.ms.toFixed(1), slowlogCmd: slowStart.cmd };
  log(`  start: ${ok ? 'ready' : `FAILED (${(start.value as Error).message})`} in ${Math.round(start.ms)} ms; worst PING ${start.maxPingMs.toFixed(1)} ms; slowlog max ${slowStart.ms.toFixed(1)} ms (${slowStart.cmd})`);
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
    result.resyncs = { count: RESYNCS, ready: ready.length, converged, failed: failed.slice(0, 1), allReadyMs: Math.round(many.ms), maxPingMs: +many.maxPingMs.toFixed(1), slowlogMaxMs: +slow.ms.toFixed(1), slowlogCmd: slow.cmd };
    log(`  ${RESYNCS} at once: ${ready.length} ready${failed.length ? `, ${failed.length} failed (${failed[0]})` : ''}, converged ${converged}, in ${Math.round(many.ms)} ms; worst PING ${many.maxPingMs.toFixed(1)} ms; slowlog max ${slow.ms.toFixed(1)} ms (${slow.cmd})`);
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
    result.failover = { vms: victims.length, ms: Math.round(r.ms), feedEntries: xlen1 - xlen0, maxPingMs: +r.maxPingMs.toFixed(1), slowlogMaxMs: +slow.ms.toFixed(1), error: r.value instanceof Error ? r.value.message : undefined };
    log(`  failover of ${victims.length} VMs: ${Math.round(r.ms)} ms, ${xlen1 - xlen0} feed entries (feed cap 10000, approximate); worst PING ${r.maxPingMs.toFixed(1)} ms`);
  }

  // 6. The embedded directory: one change at min(N, 100k) VMs.
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

function writeResult(result: Record<string, unknown>): void {
  const file = join(here, 'scale-results.json');
  const all = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as unknown[]) : [];
  all.push(result);
  writeFileSync(file, `${JSON.stringify(all, null, 2)}\n`);
  log(`  -> ${file}`);
}

const probeAt = args.indexOf('--probe');
(probeAt >= 0 ? probeChild(Number(args[probeAt + 1])) : main())
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => {});
  });
