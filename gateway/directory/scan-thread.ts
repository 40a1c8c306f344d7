/**
 * A snapshot's scan thread, from the main thread's side (redis.ts starts one for a large load):
 * a `worker_threads` worker (scan-worker.ts) with a Redis connection of its own HSCANs the hashes
 * and checks and parses each page (page.ts); the main thread only applies the pages to the mirror
 * (its Maps and indexes), so a 1M-VM start runs on two cores instead of one (bench/SCALE.md,
 * round 4).
 *
 * Bounded: the worker's own page size, command timeout and window of pages not yet applied; here
 * a deadline to start and connect, and one for silence between two messages. Any failure of the
 * thread itself (it does not start, throws, exits, goes silent) rejects with ScanThreadFailed, and
 * the caller loads on the main thread instead; a Redis error met by the thread rejects as it is.
 * `close()` terminates the thread; a scan in progress then rejects.
 */
import { Worker } from 'node:worker_threads';
import type { RedisOptions } from 'ioredis';
import type { ParsedPage } from './page.js';
import type { ScanRequest, ScanWorkerData } from './scan-worker.js';

/** The thread could not do its part: load on the main thread. `lasting`: do not try a thread again. */
export class ScanThreadFailed extends Error {
  constructor(
    message: string,
    readonly lasting: boolean,
    opts?: { cause?: unknown },
  ) {
    super(message, opts);
    this.name = 'ScanThreadFailed';
  }
}

export interface ScanThreadOptions {
  /**
   * Where Redis is: a URL, or undefined when `options` say it (host, sentinels...); `options` lose
   * their functions (a retry strategy...: they cannot cross threads, and the thread does not reconnect).
   */
  readonly url: string | undefined;
  readonly options: RedisOptions;
  /** Fields per HSCAN call. */
  readonly page: number;
  /** How long a page may keep timing out (asked again) before the scan fails, in ms (paged.ts). */
  readonly pageRetryMs: number;
  /** The worker's command timeout, in ms: the silence deadline is derived from it. */
  readonly commandTimeoutMs: number;
  /** How long the thread may take to start and connect, in ms. @default 10000 */
  readonly startMs?: number;
}

/** Pages of one hash parsed ahead of the main thread, at most (~150 KB each at 500 fields). */
const WINDOW = 4;

type Reply =
  | { readonly type: 'ready'; readonly runId: string | undefined }
  | { readonly type: 'page'; readonly page: ParsedPage }
  | { readonly type: 'done'; readonly kind: 'user' | 'vm' }
  | { readonly type: 'error'; readonly name: string; readonly message: string };

export class ScanThread {
  private readonly worker: Worker;
  private readonly silentMs: number;
  private readonly startMs: number;
  private onReply: ((m: Reply) => void) | undefined;
  private onFail: ((err: Error) => void) | undefined;
  private failure: Error | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;

  /** Starts the thread; throws ScanThreadFailed when it cannot be. */
  constructor(opts: ScanThreadOptions) {
    // A page that keeps timing out is asked again for up to pageRetryMs, its last try included.
    this.silentMs = opts.pageRetryMs + opts.commandTimeoutMs + 2_000;
    this.startMs = opts.startMs ?? 10_000;
    const data: ScanWorkerData = { url: opts.url, options: withoutFunctions(opts.options), page: opts.page, pageRetryMs: opts.pageRetryMs, window: WINDOW };
    try {
      this.worker = spawn(data);
    } catch (err) {
      throw new ScanThreadFailed(`cannot start a scan thread: ${(err as Error).message}`, true, { cause: err });
    }
    this.worker.on('message', (m: Reply) => this.onReply?.(m));
    this.worker.on('error', (err) => this.fail(new ScanThreadFailed(`the scan thread failed: ${err.message}`, true, { cause: err })));
    this.worker.on('messageerror', (err) => this.fail(new ScanThreadFailed(`a scan thread message could not be read: ${err.message}`, true, { cause: err })));
    this.worker.on('exit', (code) => this.fail(new ScanThreadFailed(`the scan thread exited (code ${code})`, true)));
  }

  /** Resolves with the run_id of the Redis server the thread is connected to. */
  ready(): Promise<string | undefined> {
    return this.await(this.startMs, (m, resolve: (runId: string | undefined) => void) => {
      if (m.type === 'ready') resolve(m.runId);
      // Its connection failed where the main thread's did not: a problem of the thread's own.
      else if (m.type === 'error') this.fail(new ScanThreadFailed(`the scan thread could not reach Redis: ${m.message}`, false));
    });
  }

  /** Scans the hashes (at once), handing each page to `onPage` (synchronously) as it comes. */
  scan(hashes: ReadonlyArray<{ readonly kind: 'user' | 'vm'; readonly key: string }>, onPage: (page: ParsedPage) => void): Promise<void> {
    let left = hashes.length;
    const done = this.await(this.silentMs, (m, resolve: (v: void) => void) => {
      if (m.type === 'page') {
        onPage(m.page);
        this.post({ type: 'ack', kind: m.page.kind });
      } else if (m.type === 'done') {
        if (--left === 0) resolve();
      } else if (m.type === 'error') {
        // A Redis error on a connection that worked: the load fails as it would on the main thread.
        const e = new Error(m.message);
        e.name = m.name;
        this.fail(e);
      }
    });
    for (const h of hashes) this.post({ type: 'scan', kind: h.kind, key: h.key });
    return done;
  }

  /** Terminates the thread (idempotent); a call in progress rejects. */
  close(): Promise<void> {
    this.fail(new Error('directory: the scan thread was closed during a load'));
    this.closing ??= this.worker.terminate().then(
      () => {},
      () => {},
    );
    return this.closing;
  }

  /**
   * Waits for replies: `on` sees each and resolves when it is done; silence for `ms`, a failure of
   * the thread or an exception in `on` rejects (and ends the thread).
   */
  private await<T>(ms: number, on: (m: Reply, resolve: (v: T) => void) => void): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<T>((resolve, reject) => {
      const settle = (): void => {
        clearTimeout(this.timer);
        this.onReply = undefined;
        this.onFail = undefined;
      };
      const watch = (): void => {
        clearTimeout(this.timer);
        const armed = performance.now();
        this.timer = setTimeout(() => {
          // Late by far: this thread was stalled (a long GC, the process stopped), and the
          // thread's messages may be waiting behind this timer: look again first.
          if (performance.now() - armed > ms + 1_000) watch();
          else this.fail(new ScanThreadFailed(`the scan thread sent nothing for ${ms} ms`, false));
        }, ms);
      };
      this.onFail = (err) => {
        settle();
        reject(err);
      };
      this.onReply = (m) => {
        watch();
        try {
          on(m, (v) => {
            settle();
            resolve(v);
          });
        } catch (err) {
          this.fail(err as Error);
        }
      };
      watch();
    });
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    clearTimeout(this.timer);
    const onFail = this.onFail;
    this.onReply = undefined;
    this.onFail = undefined;
    onFail?.(err);
    void this.close();
  }

  private post(m: ScanRequest): void {
    this.worker.postMessage(m);
  }
}

/**
 * The worker: scan-worker.js beside this file when built; from the TypeScript sources (tsx), the
 * thread does not inherit tsx's loader (a worker's entry is loaded before its --import), so it
 * registers it before loading scan-worker.ts.
 */
function spawn(workerData: ScanWorkerData): Worker {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return new Worker(new URL('./scan-worker.js', here), { workerData, name: 'oneport-directory-scan' });
  const tsx = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./scan-worker.ts', here).href;
  return new Worker(`import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`, { eval: true, workerData, name: 'oneport-directory-scan' });
}

/** Connection options without their callbacks (a retry strategy...): the thread does not reconnect. */
function withoutFunctions<T>(v: T): T {
  if (Array.isArray(v)) return v.map(withoutFunctions) as T;
  if (v === null || typeof v !== 'object' || Object.getPrototypeOf(v) !== Object.prototype) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) if (typeof x !== 'function') out[k] = withoutFunctions(x);
  return out as T;
}
