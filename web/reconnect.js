// Reconnecting by itself: jittered exponential backoff with a cap, and a budget after which it
// stops and waits for the user; and which credential a reconnect uses (the resume token of the
// last ticket answer while it is valid, else a fresh ticket). Pure logic with injected timers,
// clock and randomness, so it is tested with fake time (test/unit/reconnect.test.ts); viewer.js
// drives it.

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
   * @param {(a: import('./reconnect.js').AttemptInfo) => void} connect starts one attempt; the
   *   caller reports back with connected() / lost(). `reconnecting` is true when the attempt
   *   follows a loss (not the first connection, not the user's start()).
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
    /** Whether the coming attempts follow a loss (false for the first one and after start()). */
    this.reconnecting = false;
    /** @type {import('./reconnect.js').ReconnectState} */
    this.state = 'idle';
  }

  /** First connection, or again after a stop. */
  start() {
    this.cancel();
    this.attempts = 0;
    this.reconnecting = false;
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
    this.reconnecting = true;
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
    this.connect({ attempt: this.attempts, reconnecting: this.reconnecting });
  }

  cancel() {
    if (this.timer !== undefined) this.clearTimeout(this.timer);
    this.timer = undefined;
  }

  set(state, extra) {
    this.state = state;
    this.onStatus({ state, attempt: this.attempts, maxAttempts: this.opts.maxAttempts, reconnecting: this.reconnecting, ...extra });
  }
}

/** Don't start a reconnect with a resume token that has less than this left. */
export const RESUME_MARGIN_MS = 5_000;

/**
 * The resume token of the last ticket answer (CONTRACT section 6: bound to user + VM, valid 10
 * minutes, usable on any node, no login needed). A reconnect after a loss (4001 reroute, an
 * abnormal close, a console that went away) uses it instead of asking the API for a new ticket,
 * so it needs neither the session cookie nor a working API call. When a resume is refused (4401)
 * the token is forgotten and the next attempt gets a fresh ticket; so it is when it is about to
 * expire.
 */
export class ResumeToken {
  /** @param {{now?: () => number, marginMs?: number}} env */
  constructor(env = {}) {
    this.now = env.now ?? (() => Date.now());
    this.marginMs = env.marginMs ?? RESUME_MARGIN_MS;
    /** @type {string | undefined} */
    this.token = undefined;
    this.expiresAt = 0;
  }

  /**
   * Keep the resume token of a ticket answer (`{resume, resumeExpiresAt}`); an answer without
   * one (an older gateway) forgets the previous token.
   * @param {{resume?: unknown, resumeExpiresAt?: unknown}} answer
   */
  remember(answer) {
    const token = typeof answer?.resume === 'string' && answer.resume !== '' ? answer.resume : undefined;
    const exp = typeof answer?.resumeExpiresAt === 'string' ? Date.parse(answer.resumeExpiresAt) : NaN;
    if (!token || !Number.isFinite(exp)) return this.forget();
    this.token = token;
    this.expiresAt = exp;
  }

  forget() {
    this.token = undefined;
    this.expiresAt = 0;
  }

  /** Whether a reconnect can use the token now. */
  usable() {
    return this.token !== undefined && this.expiresAt - this.now() > this.marginMs;
  }

  /**
   * The WebSocket path that reconnects to `vm` with the token, or undefined (get a fresh ticket).
   * @param {string} vm
   * @param {string} protocol
   */
  path(vm, protocol) {
    if (!this.usable()) return undefined;
    return `/tunnel/${encodeURIComponent(vm)}/${encodeURIComponent(protocol)}?resume=${encodeURIComponent(/** @type {string} */ (this.token))}`;
  }

  /**
   * A connection made with the token ended with `code` (a WebSocket close code; undefined when
   * unknown). 4401 means the gateway refused the token (expired, sessions revoked, a new signing
   * key): forget it. Returns true when that happened, i.e. the next attempt should get a fresh
   * ticket at once.
   * @param {number | undefined} code
   */
  refused(code) {
    if (code !== 4401) return false;
    this.forget();
    return true;
  }
}
