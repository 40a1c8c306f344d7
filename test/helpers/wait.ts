/**
 * Waiting in tests and benchmarks, bounded every time: a guard so that a broken gateway fails a
 * test in seconds with what was awaited, never a way to let time pass. Await an event where there
 * is one (`deadline` bounds it); poll (`until`, `eventually`) only where the thing to observe has no
 * event, e.g. a counter in another module or another process's API.
 */

/**
 * Rejects after `ms` with `what` in the message: the other side of a race, as in
 * `Promise.race([closed, deadline(5000, 'WebSocket close')])`. The timer does not hold the process.
 */
export function deadline(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    timer.unref();
  });
}

export interface UntilOptions {
  /** @default 10_000 */
  readonly timeoutMs?: number;
  /** Time between checks. @default 20 */
  readonly intervalMs?: number;
  /** Named in the error when time runs out. @default 'condition' */
  readonly what?: string;
}

/** Resolves once `check` holds; checks every `intervalMs`. A check that throws fails the wait. */
export async function until(check: () => boolean | Promise<boolean>, opts: UntilOptions = {}): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${opts.what ?? 'condition'}: not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 20));
  }
}

/**
 * Resolves with the first value other than undefined that `check` returns, checking every 50 ms;
 * a check that throws is tried again (a live system's state: a node restarting, a leader not yet
 * elected), and the last error is named if time runs out.
 */
export async function eventually<T>(check: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms${last ? ` (${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
