// Reconnecting by itself: jittered exponential backoff with a cap, and a budget after which it
// stops and waits for the user. Pure logic with injected timers and randomness, so it is tested
// with fake time (test/unit/reconnect.test.ts); viewer.js drives it.

/** @type {import('./reconnect.js').ReconnectOptions} */
export const DEFAULTS = Object.freeze({
  baseMs: 500, // first retry after 0.25-0.5 s
  capMs: 15_000, // never wait more than 15 s between attempts
  maxAttempts: 10, // then stop and offer a button
  stableMs: 5_000, // a connection that stayed up this long resets the count
});

/**
 * Delay before retry number `attempt` (1-based): "equal jitter", half fixed and half random, so
 * many viewers cut off together do not come back in lockstep, yet none retries at once.
 */
export function backoffDelay(attempt, opts = DEFAULTS, random = Math.random) {
  const exp = Math.min(opts.capMs, opts.baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + random() * (exp / 2));
}

export class Reconnector {
  /**
   * @param {() => void} connect starts one attempt; the caller reports back with connected() / lost()
   * @param {(s: import('./reconnect.js').ReconnectStatus) => void} onStatus
   */
  constructor(connect, onStatus, opts = {}, env = {}) {
    this.connect = connect;
    this.onStatus = onStatus;
    this.opts = { ...DEFAULTS, ...opts };
    this.now = env.now ?? (() => Date.now());
    this.random = env.random ?? Math.random;
    this.setTimeout = env.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimeout = env.clearTimeout ?? ((h) => clearTimeout(h));
    this.attempts = 0;
    this.timer = undefined;
    this.connectedAt = undefined;
    /** @type {import('./reconnect.js').ReconnectState} */
    this.state = 'idle';
  }

  /** First connection, or again after a stop. */
  start() {
    this.cancel();
    this.attempts = 0;
    this.attempt();
  }

  /** Retry now, without waiting for the timer (the network came back; the user asked). */
  retryNow() {
    if (this.state !== 'waiting') return;
    this.cancel();
    this.attempt();
  }

  connected() {
    this.connectedAt = this.now();
    this.set('connected', {});
  }

  /**
   * The connection ended or an attempt failed.
   * @param {{fatal?: boolean, reason?: string, retryMs?: number}} info
   */
  lost(info = {}) {
    // One loss per attempt: a late second report (error, then close) must not double the timers.
    if (this.state === 'stopped' || this.state === 'waiting') return;
    if (this.connectedAt !== undefined && this.now() - this.connectedAt >= this.opts.stableMs) this.attempts = 0;
    this.connectedAt = undefined;
    if (info.fatal) return this.stop(info.reason ?? 'stopped');
    if (this.attempts >= this.opts.maxAttempts) return this.stop(`gave up after ${this.attempts} attempts${info.reason ? `: ${info.reason}` : ''}`);
    const delay = info.retryMs ?? backoffDelay(this.attempts, this.opts, this.random);
    this.set('waiting', { delayMs: delay, reason: info.reason });
    this.timer = this.setTimeout(() => {
      this.timer = undefined;
      this.attempt();
    }, delay);
  }

  /** Stop retrying (user's disconnect, fatal error, budget spent). */
  stop(reason = 'stopped') {
    this.cancel();
    this.connectedAt = undefined;
    this.set('stopped', { reason });
  }

  attempt() {
    this.attempts += 1;
    this.set('connecting', {});
    this.connect();
  }

  cancel() {
    if (this.timer !== undefined) this.clearTimeout(this.timer);
    this.timer = undefined;
  }

  set(state, extra) {
    this.state = state;
    this.onStatus({ state, attempt: this.attempts, maxAttempts: this.opts.maxAttempts, ...extra });
  }
}
