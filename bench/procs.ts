/**
 * Child processes for the benchmark: the gateway and backend (Node, with an IPC channel) and the
 * peers (HAProxy, websockify). Waiting until a peer's port accepts, CPU time of a process tree
 * from /proc, and stopping everything we started (also on error and on exit). Free ports come
 * from test/helpers/net.ts.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitForPort } from '../test/helpers/net.js';

const started = new Set<ChildProcess>();

/** Last resort: nothing we started outlives us. Only our own children, by pid. */
process.on('exit', () => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

export interface Peer {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves when the process exits, with a description. */
  readonly exited: Promise<string>;
  stop(): Promise<void>;
}

export function spawnPeer(
  name: string,
  command: string,
  args: readonly string[],
  opts: { logFile: string; env?: NodeJS.ProcessEnv; cwd?: string; ipc?: boolean },
): Peer {
  const fd = openSync(opts.logFile, 'a');
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: opts.ipc ? ['ignore', fd, fd, 'ipc'] : ['ignore', fd, fd],
  });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  started.add(child);
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => {
      started.delete(child);
      resolve(signal ? `killed by ${signal}` : `exited with ${code}`);
    });
    child.once('error', (e) => {
      started.delete(child);
      resolve(`failed: ${e.message}`);
    });
  });
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = await Promise.race([exited.then(() => 'exited'), sleep(3000, 'timeout')]);
    if (t === 'timeout') {
      child.kill('SIGKILL');
      await Promise.race([exited, sleep(2000)]);
    }
  };
  return { name, child, pid: child.pid, logFile: opts.logFile, exited, stop };
}

/** The first message of the given type on a child's IPC channel, or an error if it dies first. */
export function firstMessage<T extends { type: string }>(peer: Peer, type: string, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`${peer.name}: no "${type}" message within ${timeoutMs} ms${tail(peer.logFile)}`)), timeoutMs);
    const onMessage = (m: unknown): void => {
      if (m && typeof m === 'object' && (m as { type?: unknown }).type === type) done(undefined, m as T);
    };
    const done = (err?: Error, v?: T): void => {
      clearTimeout(timer);
      peer.child.removeListener('message', onMessage);
      if (err) reject(err);
      else resolve(v as T);
    };
    peer.child.on('message', onMessage);
    void peer.exited.then((how) => done(new Error(`${peer.name} ${how} before it was ready${tail(peer.logFile)}`)));
  });
}

export function tail(file: string, lines = 15): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    if (!text) return '';
    return `\n--- ${file} (last lines) ---\n${text.split('\n').slice(-lines).join('\n')}`;
  } catch {
    return '';
  }
}

/** Poll until 127.0.0.1:port accepts a TCP connection; fail early if the peer exits. */
export async function waitAccepting(peer: Peer, port: number, timeoutMs = 10_000): Promise<void> {
  let dead: string | undefined;
  void peer.exited.then((how) => (dead = how));
  try {
    await waitForPort(port, timeoutMs, () => dead !== undefined);
  } catch {
    if (dead) throw new Error(`${peer.name} ${dead} before accepting on ${port}${tail(peer.logFile)}`);
    throw new Error(`${peer.name} did not accept on 127.0.0.1:${port} within ${timeoutMs} ms${tail(peer.logFile)}`);
  }
}

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

interface StatLine {
  ppid: number;
  /** utime + stime + cutime + cstime, in clock ticks. */
  ticks: number;
}

function readStat(pid: number): StatLine | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    const n = (i: number): number => Number(rest[i] ?? 0);
    return { ppid: n(1), ticks: n(11) + n(12) + n(13) + n(14) };
  } catch {
    return undefined;
  }
}

/**
 * CPU seconds (user + system) used so far by a process and all its live descendants, plus the
 * children it has reaped. websockify forks one process per connection: those count too.
 */
export function treeCpuSeconds(root: number): number {
  if (!existsSync(`/proc/${root}`)) return Number.NaN;
  const stats = allStats();
  let ticks = 0;
  for (const pid of treePids(root, stats)) ticks += stats.get(pid)?.ticks ?? 0;
  return ticks / ticksPerSecond();
}

/** CPU seconds (user + system) of one process alone: its own threads, no descendants. */
export function ownCpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11] ?? 0) + Number(rest[12] ?? 0)) / ticksPerSecond();
  } catch {
    return Number.NaN;
  }
}

function allStats(): Map<number, StatLine> {
  const stats = new Map<number, StatLine>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(Number(name));
    if (st) stats.set(Number(name), st);
  }
  return stats;
}

/** A live process and its live descendants (root first): e.g. oneport's primary and its workers. */
export function treePids(root: number, stats: Map<number, StatLine> = allStats()): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, st] of stats) {
    const list = children.get(st.ppid) ?? [];
    list.push(pid);
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const todo = [root];
  const seen = new Set<number>();
  while (todo.length > 0) {
    const pid = todo.shift() as number;
    if (seen.has(pid) || !stats.has(pid)) continue;
    seen.add(pid);
    out.push(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return out;
}

/** Open descriptors of one process (entries of /proc/<pid>/fd); NaN when it is gone. */
export function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return Number.NaN;
  }
}

/** The soft limit on open descriptors (`ulimit -n`) of a process, from /proc/<pid>/limits. */
export function nofileLimit(pid: number | 'self' = 'self'): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  return !m || m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
}

/** Stop every process we started, newest first. */
export async function stopAll(peers: readonly Peer[]): Promise<void> {
  for (const p of [...peers].reverse()) await p.stop().catch(() => undefined);
}

/** Resident set size of one process, KiB (VmRSS); NaN when it is gone. */
export function rssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}
