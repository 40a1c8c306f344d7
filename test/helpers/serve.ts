/**
 * A real `oneport serve` process for a test (from the sources, with tsx): its JSON log lines
 * parsed as they come, every process it starts (workers, a restart's successor) killed at
 * teardown, and what it said shown when the test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { onJsonLines } from './json-lines.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'gateway', 'cli.ts');

export type Line = Record<string, unknown>;

interface TestLike {
  teardown(fn: () => unknown): void;
  passing(): boolean;
  comment(...args: unknown[]): void;
}

export interface ServeProcess {
  readonly proc: ChildProcess;
  /** Every JSON log line so far, in order. */
  readonly lines: Line[];
  /** The processes to kill at teardown: this one, its workers, a successor (add more). */
  readonly pids: Set<number>;
  readonly exited: Promise<number | null>;
}

export function spawnServe(t: TestLike, configFile: string, state: string): ServeProcess {
  const proc = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--config', configFile], { cwd: ROOT, env: { ...process.env, ONEPORT_STATE: state }, stdio: ['ignore', 'pipe', 'pipe'] });
  const pids = new Set<number>([proc.pid!]);
  const lines: Line[] = [];
  onJsonLines<Line>(proc.stdout!, (l) => {
    lines.push(l);
    if ((l.event === 'worker-started' || l.event === 'restart-spawned') && typeof l.pid === 'number') pids.add(l.pid);
  });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  t.teardown(() => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
  // What the processes said, when the test fails.
  t.teardown(() => {
    if (!t.passing()) t.comment(`events: ${lines.map((l) => `${String(l.event ?? l.msg)}${l.worker !== undefined ? `@${String(l.worker)}` : ''}`).join(' ')}\nstderr: ${stderr}`);
  });
  return { proc, lines, pids, exited };
}
