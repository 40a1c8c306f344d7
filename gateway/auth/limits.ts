/**
 * Brute-force limits (rate-limiter-flexible, in memory; the cluster issue can swap in its Redis
 * limiter with the same calls), a bound on concurrent work per client, and the key a client
 * address is limited under.
 *
 * Two ways to spend a budget: `check` + `count` for cheap checks (ticket MACs) where only failures
 * count, and `take` (+ `refund` on success) for expensive ones (password hashing), where the
 * attempt must be reserved BEFORE the work: checking first and counting after let 30 parallel
 * guesses all pass a check that allowed 10.
 */
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { OneportError } from '../errors.js';
import { once } from '../once.js';

function rateLimited(msBeforeNext: number): OneportError {
  return new OneportError('ONEPORT_ERR_RATE_LIMITED', undefined, { retryAfter: Math.max(1, Math.ceil(msBeforeNext / 1000)) });
}

/** A budget of attempts per key (AttemptLimiter; with workers, the primary's, over IPC). */
export interface Limiter {
  readonly points: number;
  check(key: string): Promise<void>;
  count(key: string): Promise<void>;
  take(key: string): Promise<void>;
  refund(key: string): Promise<void>;
  reset(key: string): Promise<void>;
}

/** Where an Authenticator gets its budgets: `name` says which one (e.g. `loginsPerAddress`). */
export type LimiterFactory = (name: string, points: number) => Limiter;

export class AttemptLimiter implements Limiter {
  private readonly limiter: RateLimiterMemory;

  constructor(readonly points: number, durationSeconds = 60) {
    this.limiter = new RateLimiterMemory({ points, duration: durationSeconds });
  }

  /** Throws ONEPORT_ERR_RATE_LIMITED (with Retry-After) if `key` used up its budget. */
  async check(key: string): Promise<void> {
    const res = await this.limiter.get(key);
    if (res && res.consumedPoints >= this.points) throw rateLimited(res.msBeforeNext);
  }

  async count(key: string): Promise<void> {
    await this.limiter.penalty(key, 1);
  }

  /**
   * Reserve one attempt for `key` now, atomically; throws ONEPORT_ERR_RATE_LIMITED (with
   * Retry-After) when none is left. Give it back with `refund` if the attempt should not count.
   */
  async take(key: string): Promise<void> {
    try {
      await this.limiter.consume(key, 1);
    } catch (e) {
      if (e instanceof RateLimiterRes) throw rateLimited(e.msBeforeNext);
      throw e;
    }
  }

  async refund(key: string): Promise<void> {
    // Not below zero: a window that ended during the attempt must not start the next one in credit.
    const res = await this.limiter.get(key);
    if (res && res.consumedPoints > 0) await this.limiter.reward(key, 1);
  }

  async reset(key: string): Promise<void> {
    await this.limiter.delete(key);
  }
}

/**
 * At most `perKey` jobs at once for one key and `total` for all keys together; a job beyond
 * either is refused at once (429, Retry-After 1 s) rather than queued, so a flood of password
 * guesses cannot fill libuv's thread pool (scrypt, 32 MiB each) and starve everyone else.
 */
export class ConcurrencyGate {
  private readonly running = new Map<string, number>();
  private all = 0;

  constructor(
    readonly perKey: number,
    readonly total: number,
  ) {}

  /** Jobs running now (for tests and metrics). */
  get size(): number {
    return this.all;
  }

  /** A slot for `key`, or ONEPORT_ERR_RATE_LIMITED. The returned function frees it (idempotent). */
  enter(key: string): () => void {
    const mine = this.running.get(key) ?? 0;
    if (mine >= this.perKey || this.all >= this.total) throw rateLimited(1000);
    this.running.set(key, mine + 1);
    this.all++;
    return once(() => {
      this.all--;
      const n = (this.running.get(key) ?? 1) - 1;
      if (n <= 0) this.running.delete(key);
      else this.running.set(key, n);
    });
  }
}

