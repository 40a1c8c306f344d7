/**
 * The body of a snapshot's scan thread (started by scan-thread.ts, one per large load): its own
 * Redis connection HSCANs the hashes it is asked for, page by page, and checks and parses each
 * page (page.ts) before handing it over. The RESP decoding, the socket work and each record's
 * JSON.parse (with their garbage) stay on this thread, off the main one's event loop.
 *
 * Bounded: `page` fields a call, a command timeout (a page that timed out is asked again for a
 * while, like the main thread's reads: paged.ts), at most `window` pages of a hash handed over
 * and not yet applied (acknowledged), and no reconnect: a lost connection ends the scan with an
 * error.
 *
 * Messages in: {scan, kind, key}, {ack, kind}. Out: {ready, runId} once connected, {page} per
 * page, {done, kind} per hash, {error, name, message} (the thread then waits to be terminated).
 */
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { Redis, type RedisOptions } from 'ioredis';
import { parsePage } from './page.js';
import { pagedRead } from './paged.js';

export interface ScanWorkerData {
  /** Where Redis is: a URL, or undefined when `options` say it. */
  readonly url: string | undefined;
  readonly options: RedisOptions;
  /** Fields per HSCAN call. */
  readonly page: number;
  /** How long a page may keep timing out (asked again) before the scan fails, in ms (paged.ts). */
  readonly pageRetryMs: number;
  /** Pages of one hash handed over and not yet acknowledged, at most. */
  readonly window: number;
}

export type ScanRequest = { readonly type: 'scan'; readonly kind: 'user' | 'vm'; readonly key: string } | { readonly type: 'ack'; readonly kind: 'user' | 'vm' };

const data = workerData as ScanWorkerData;
const port = parentPort!;

// Background work: on a contended core, Redis (when on this host) and this node's main thread
// (which serves tunnels and applies the pages) go first. A Redis preempted in the middle of a page
// holds every client. On Linux the nice value is per thread: this one only (elsewhere it would be
// the whole process's, so not there). With a core free it changes nothing.
if (process.platform === 'linux') {
  try {
    setPriority(0, 10);
  } catch {
    // Best effort (a container may refuse it).
  }
}

const fail = (err: unknown): void => {
  const e = err instanceof Error ? err : new Error(String(err));
  port.postMessage({ type: 'error', name: e.name, message: e.message });
};

const opts: RedisOptions = { ...data.options, lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null };
const conn = data.url !== undefined ? new Redis(data.url, opts) : new Redis(opts);
conn.on('error', () => {}); // failures surface through the commands

/** Per hash: pages handed over and not yet acknowledged, and who waits for room. */
const windows = new Map<'user' | 'vm', { open: number; wake: (() => void) | undefined }>();

const paged = <T>(read: () => Promise<T>): Promise<T> => pagedRead(read, { budgetMs: data.pageRetryMs, up: () => conn.status === 'ready' });

/** Every page of one hash, in cursor order; the next page is asked for before this one is parsed. */
async function scan(kind: 'user' | 'vm', key: string): Promise<void> {
  const win = { open: 0, wake: undefined as (() => void) | undefined };
  windows.set(kind, win);
  const call = (at: string): Promise<[string, string[]]> => paged(() => conn.hscan(key, at, 'COUNT', data.page));
  let pending = call('0');
  pending.catch(() => {});
  for (;;) {
    const [next, flat] = await pending;
    if (next !== '0') {
      pending = call(next);
      // Its failure is read at the next turn; meanwhile it must not count as unhandled.
      pending.catch(() => {});
    }
    const page = parsePage(kind, flat);
    while (win.open >= data.window) await new Promise<void>((resolve) => (win.wake = resolve));
    win.open++;
    port.postMessage({ type: 'page', page }, [page.refs.buffer as ArrayBuffer]);
    if (next === '0') break;
  }
  port.postMessage({ type: 'done', kind });
}

port.on('message', (m: ScanRequest) => {
  if (m.type === 'ack') {
    const win = windows.get(m.kind);
    if (!win) return;
    win.open--;
    const wake = win.wake;
    win.wake = undefined;
    wake?.();
  } else scan(m.kind, m.key).catch(fail);
});

conn
  .connect()
  .then(() => conn.info('server'))
  .then((info) => port.postMessage({ type: 'ready', runId: /run_id:(\w+)/.exec(info)?.[1] }))
  .catch(fail);
