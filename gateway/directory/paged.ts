/**
 * One read of a paged snapshot (an HSCAN page, an XRANGE batch), asked again while it times out on
 * a connection still up. A page is small (~0.3 ms of Redis time), so a timeout means Redis, or
 * this process, is busy, not gone: many nodes loading at once (a cluster's cold start, every node
 * after a Redis restart) queue their pages on one Redis, and a node's first load failing there
 * stopped the node. Reads are safe to repeat. Each try waits longer before the next (a timed-out
 * command still runs in Redis: asking again at once only queues more), until `budgetMs` has passed
 * since the first try. Any other error, or a connection no longer up, ends it at once.
 *
 * Shared by the main thread's loads (redis.ts) and the scan thread's (scan-worker.ts).
 */
import { setTimeout as delay } from 'node:timers/promises';

export interface PagedRetry {
  /** How long a page may keep timing out before the load fails, in ms (from its first try). */
  readonly budgetMs: number;
  /** The connection is still up (ioredis `status === 'ready'`). */
  readonly up: () => boolean;
  /** Aborted when the directory closes. */
  readonly signal?: AbortSignal | undefined;
}

/** The first pause after a timeout, and the longest (ms). */
const FIRST_PAUSE_MS = 250;
const MAX_PAUSE_MS = 4_000;

/** Default budget: a page of a node's load may time out for a minute before the load fails. */
export const PAGE_RETRY_MS = 60_000;

export async function pagedRead<T>(read: () => Promise<T>, retry: PagedRetry): Promise<T> {
  const giveUpAt = performance.now() + retry.budgetMs;
  for (let pause = FIRST_PAUSE_MS; ; pause = Math.min(2 * pause, MAX_PAUSE_MS)) {
    try {
      return await read();
    } catch (err) {
      const timedOut = (err as Error).message.includes('timed out');
      if (!timedOut || !retry.up() || retry.signal?.aborted === true || performance.now() + pause >= giveUpAt) throw err;
    }
    await delay(pause, undefined, retry.signal ? { signal: retry.signal } : undefined);
  }
}
