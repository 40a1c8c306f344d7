/**
 * Brute-force limits (rate-limiter-flexible, in memory; the cluster issue can swap in its Redis
 * limiter with the same calls). Failures are counted; a key over its budget is refused before any
 * password hashing or ticket lookup is done.
 */
import { RateLimiterMemory } from 'rate-limiter-flexible';
import { OneportError } from '../errors.js';

export class AttemptLimiter {
  private readonly limiter: RateLimiterMemory;

  constructor(readonly points: number, durationSeconds = 60) {
    this.limiter = new RateLimiterMemory({ points, duration: durationSeconds });
  }

  /** Throws ONEPORT_ERR_RATE_LIMITED (with Retry-After) if `key` used up its budget. */
  async check(key: string): Promise<void> {
    const res = await this.limiter.get(key);
    if (res && res.consumedPoints >= this.points) {
      throw new OneportError('ONEPORT_ERR_RATE_LIMITED', undefined, { retryAfter: Math.max(1, Math.ceil(res.msBeforeNext / 1000)) });
    }
  }

  async count(key: string): Promise<void> {
    await this.limiter.penalty(key, 1);
  }

  async reset(key: string): Promise<void> {
    await this.limiter.delete(key);
  }
}
