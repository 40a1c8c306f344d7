/**
 * The cluster-wide auth store: console tickets and session revocations in Redis, with exactly the
 * semantics of MemoryAuthStore (store.ts), so a ticket redeemed on one node is spent on all.
 *
 * Keys (prefix default `oneport:auth:`):
 * | key                     | type   | content                                                  |
 * |-------------------------|--------|----------------------------------------------------------|
 * | `<prefix>t:<ticket id>`  | hash   | `rec` TicketRecord JSON, `exp` expiresAt (ms), and once  |
 * |                         |        | redeemed `client`, `sid` and `at`; PX expiry = expiresAt + grace |
 * | `<prefix>r:<session id>` | string | revoked until (ms); PX expiry = until + grace             |
 *
 * Redemption is ONE Lua script: find, check expiry against the caller's clock (as the memory store
 * does; Redis's own expiry only collects garbage, `graceMs` after the ticket's end so that a late
 * redemption still says 'expired' rather than 'unknown'), bind on first use, answer 'again' to the
 * bound address within the reuse window, refuse everyone else. Scripts run one at a time, so of any number of racing
 * redemptions exactly one is 'first'.
 */
import type { RedisOptions, Redis } from 'ioredis';
import type { AuthStore, Redemption, TicketRecord } from './store.js';
import { DirectoryUnavailableError, createConnection, describeRedis, redisCallError } from '../directory/redis.js';

export interface RedisAuthStoreOptions {
  /** Where Redis is: URL or ioredis options, as for RedisDirectory (Sentinel, TLS, password). */
  readonly redis: string | RedisOptions;
  /** @default 'oneport:auth:' */
  readonly prefix?: string;
  /** A call without an answer for this long fails. @default 2000 ms */
  readonly commandTimeoutMs?: number;
  /** Records outlive their expiry by this much, so late attempts are told 'expired'. @default 30000 ms */
  readonly graceMs?: number;
  /** @default 'oneport-auth' */
  readonly connectionName?: string;
  /** The clock for revocations and record lifetimes. @default Date.now */
  readonly now?: () => number;
}

/** ARGV: record JSON, expiresAt, ttl ms. A fresh (unbound) ticket, as MemoryAuthStore's set(). */
const PUT_LUA = `
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'exp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`;

/** ARGV: client, now, new session id, reuse window (ms). Returns {outcome, record JSON or reason, session id}. */
const REDEEM_LUA = `
local h = redis.call('HMGET', KEYS[1], 'rec', 'exp', 'client', 'sid', 'at')
if not h[1] then return {'refused', 'unknown'} end
if tonumber(h[2]) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {'refused', 'expired'}
end
if not h[3] then
  redis.call('HSET', KEYS[1], 'client', ARGV[1], 'sid', ARGV[3], 'at', ARGV[2])
  return {'first', h[1], ARGV[3]}
end
if h[3] == ARGV[1] and tonumber(ARGV[2]) - tonumber(h[5] or ARGV[2]) <= tonumber(ARGV[4]) then return {'again', h[1], h[4]} end
return {'refused', 'replay'}
`;

type Script = (...args: Array<string | number>) => Promise<unknown>;

export class RedisAuthStore implements AuthStore {
  private readonly conn: Redis;
  private readonly prefix: string;
  private readonly graceMs: number;
  private readonly now: () => number;
  private readonly target: string;
  private closing: Promise<void> | undefined;

  /** Connect; rejects with DirectoryUnavailableError if Redis cannot be reached. */
  static async open(opts: RedisAuthStoreOptions): Promise<RedisAuthStore> {
    const store = new RedisAuthStore(opts);
    try {
      await store.conn.connect();
    } catch (err) {
      store.conn.disconnect();
      throw new DirectoryUnavailableError(`auth store: cannot reach Redis at ${store.target}: ${(err as Error).message}`, { cause: err });
    }
    return store;
  }

  private constructor(opts: RedisAuthStoreOptions) {
    this.prefix = opts.prefix ?? 'oneport:auth:';
    this.graceMs = opts.graceMs ?? 30_000;
    this.now = opts.now ?? Date.now;
    this.target = describeRedis(opts.redis);
    const timeout = opts.commandTimeoutMs ?? 2_000;
    this.conn = createConnection(opts.redis, {
      commandTimeout: timeout,
      connectTimeout: Math.max(timeout, 1_000),
      connectionName: opts.connectionName ?? 'oneport-auth',
    });
    this.conn.on('error', () => {
      // Reconnects are ioredis's job; each call reports its own failure.
    });
    this.conn.defineCommand('oneportTicketPut', { lua: PUT_LUA, numberOfKeys: 1 });
    this.conn.defineCommand('oneportTicketRedeem', { lua: REDEEM_LUA, numberOfKeys: 1 });
  }

  private script(name: 'oneportTicketPut' | 'oneportTicketRedeem'): Script {
    return (this.conn as unknown as Record<typeof name, Script>)[name].bind(this.conn);
  }

  private async call<T>(what: string, fn: () => Promise<unknown>): Promise<T> {
    if (this.closing) throw new DirectoryUnavailableError(`auth store: ${what}: the store is closed`);
    try {
      return (await fn()) as T;
    } catch (err) {
      throw redisCallError(`auth store: ${what}`, this.target, err);
    }
  }

  async putTicket(record: TicketRecord): Promise<void> {
    const ttl = Math.max(1, record.expiresAt - this.now() + this.graceMs);
    await this.call('store ticket', () => this.script('oneportTicketPut')(`${this.prefix}t:${record.id}`, JSON.stringify(record), record.expiresAt, ttl));
  }

  async redeemTicket(id: string, client: string, now: number, newSessionId: string, reuseMs: number): Promise<Redemption> {
    const r = await this.call<[string, string, string?]>('redeem ticket', () => this.script('oneportTicketRedeem')(`${this.prefix}t:${id}`, client, now, newSessionId, reuseMs));
    const [outcome, a, sid] = r;
    if (outcome === 'first' || outcome === 'again') return { outcome, record: JSON.parse(a) as TicketRecord, sessionId: sid ?? '' };
    if (a === 'unknown' || a === 'expired' || a === 'replay') return { outcome: 'refused', reason: a };
    throw new Error(`auth store: unexpected redemption reply ${JSON.stringify(r)}`);
  }

  async revokeSession(sessionId: string, until: number): Promise<void> {
    const ttl = until - this.now() + this.graceMs;
    if (ttl <= 0) return;
    await this.call('revoke session', () => this.conn.set(`${this.prefix}r:${sessionId}`, String(until), 'PX', ttl));
  }

  async isSessionRevoked(sessionId: string): Promise<boolean> {
    const until = await this.call<string | null>('check session', () => this.conn.get(`${this.prefix}r:${sessionId}`));
    return until !== null && Number(until) > this.now();
  }

  /** Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.conn.quit().then(
      () => undefined,
      () => this.conn.disconnect(),
    );
    return this.closing;
  }
}
