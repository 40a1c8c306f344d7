/**
 * bench:scale `--serve 1,2`: a whole `oneport serve` node joining the loaded directory, with each
 * number of workers in turn: wall time from spawn to its `listening` line (the port opens once the
 * primary's mirror and every worker's copy of it are loaded), and the CPU of its process tree by
 * then. Each start is a fresh process with a fresh state folder. The node runs built (`npm run
 * build`, dist/), as `npm start` and the service unit do: under tsx each worker would first compile
 * the sources, seconds of CPU per process that no installed node pays.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { onJsonLines } from '../test/helpers/json-lines.js';
import { freePort } from '../test/helpers/net.js';
import { treeCpuSeconds } from './procs.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface ServeStart {
  readonly workers: number;
  readonly readyMs: number;
  /** CPU seconds of the primary and its workers from spawn to `listening`. */
  readonly cpuS: number;
  readonly load: string;
}

/** Build dist/ once before the starts (about 20 s). */
export function buildForServe(): void {
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'inherit' });
}

export async function serveStart(redisUrl: string, prefix: string, workers: number, timeoutMs = 300_000): Promise<ServeStart> {
  const state = mkdtempSync(join(tmpdir(), 'oneport-scale-serve-'));
  const config = join(state, 'config.json');
  writeFileSync(
    config,
    JSON.stringify({
      listen: `127.0.0.1:${await freePort()}`,
      state,
      nodeId: `scale-serve-${workers}`,
      workers,
      demo: { enabled: false },
      log: { level: 'info', format: 'json' },
      cluster: { redis: redisUrl, prefix },
    }),
  );
  const t0 = performance.now();
  const proc = spawn(process.execPath, [join(ROOT, 'dist', 'gateway', 'cli.js'), 'serve', '--config', config], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve with ${workers} workers: not listening within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs);
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`serve with ${workers} workers exited (${code}) before listening; stderr: ${stderr}`));
      });
      onJsonLines(proc.stdout, (l) => {
        if (l.event !== 'listening') return;
        clearTimeout(timer);
        resolve();
      });
    });
    const readyMs = performance.now() - t0;
    return { workers, readyMs: Math.round(readyMs), cpuS: +treeCpuSeconds(proc.pid!).toFixed(2), load: loadavg().map((x) => x.toFixed(1)).join(' ') };
  } finally {
    proc.kill('SIGKILL');
    await new Promise((r) => (proc.exitCode !== null ? r(undefined) : proc.once('exit', r)));
    rmSync(state, { recursive: true, force: true });
  }
}
