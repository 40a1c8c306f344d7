/**
 * Which node holds a resumable session, recorded in Redis (`<prefix>session:<id>` -> node id), so
 * a client that comes back through another node can be relayed to it (resume.ts).
 */
import type { Redis } from 'ioredis';

const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;

export class RedisSessionLocator {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly nodeId: string,
  ) {}

  put(id: string, ttlMs: number): void {
    this.redis.set(`${this.prefix}session:${id}`, this.nodeId, 'PX', ttlMs).catch(() => undefined);
  }

  forget(id: string): void {
    this.redis.del(`${this.prefix}session:${id}`).catch(() => undefined);
  }

  async holder(id: string): Promise<string | undefined> {
    if (!SESSION_ID.test(id)) return undefined;
    return (await this.redis.get(`${this.prefix}session:${id}`).catch(() => null)) ?? undefined;
  }
}
