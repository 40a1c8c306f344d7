/**
 * The cluster-wide auth store: console tickets and session revocations in Redis, with exactly the
 * semantics of MemoryAuthStore (store.ts), so a ticket redeemed on one node is spent on all.
 *
 * Keys (prefix default `oneport:auth:`):
 * | key                     | type   | content                                                  |
 * |-------------------------|--------|----------------------------------------------------------|
 * | `<prefix>t:<ticket id>`  | hash   | `rec` TicketRecord JSON, `exp` expiresAt (ms), and once  |
 * |                         |        | redeemed `client`, `sid`, `at`, `open` (connections open) |
 * |                         |        | and `closed` (when the last ended); PX expiry = expiresAt + grace |
 * | `<prefix>r:<session id>` | string | revoked until (ms); PX expiry = until + grace             |
 *
 * Redemption is ONE Lua script: find, check expiry against the caller's clock (as the memory store
 * does; Redis's own expiry only collects garbage, `graceMs` after the ticket's end so that a late
 * redemption still says 'expired' rather than 'unknown'), bind on first use, answer 'again' to the
 * bound address within the reuse rule (store.ts TicketReuse), refuse everyone else. A connection's
 * end is counted by a second script; a node that crashes with connections open leaves `open` up,
 * and the reuse window (counted from the first use) still ends it. Scripts run one at a time, so of any number of racing
 * redemptions exactly one is 'first'.
 *
 * Revocation checks never wait for Redis (a signed-in API call must not fail while Redis fails
 * over): every node keeps a copy of the revoked sessions, loaded with SCAN when it connects and
 * after every reconnect, and kept current by a channel (`<prefix>revoked`) on which each
 * revocation is published by the same script that stores it. A revocation only ever ends by
 * expiring, so the copy only grows and is pruned by time. It reaches other nodes within a round
 * trip; a node cut off from Redis keeps its copy, as it keeps its directory mirror.
 */
import { randomBytes } from 'node:crypto';
import type { RedisOptions, Redis } from 'ioredis';
import type { AuthStore, Redemption, TicketRecord, TicketReuse } from './store.js';
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
  /**
   * A session revoked by another store on the same Redis (another node: a logout, an admin ending
   * a console session), so that this node can end the live tunnels it opened.
   */
  readonly onRevoked?: (sessionId: string) => void;
}

/** ARGV: record JSON, expiresAt, ttl ms. A fresh (unbound) ticket, as MemoryAuthStore's set(). */
const PUT_LUA = `
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'exp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`;

/** KEYS: the revocation key, the channel. ARGV: until (ms), ttl (ms), the message. */
const REVOKE_LUA = `
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
`;

/** Revocations are loaded in batches of this many keys. */
const SCAN_COUNT = 1000;

/**
 * ARGV: client, now, new session id, reuse window (ms), reuse after the last close (ms).
 * Returns {outcome, record JSON or reason, session id}.
 */
const REDEEM_LUA = `
local h = redis.call('HMGET', KEYS[1], 'rec', 'exp', 'client', 'sid', 'at', 'open', 'closed')
if not h[1] then return {'refused', 'unknown'} end
local now = tonumber(ARGV[2])
if tonumber(h[2]) <= now then
  redis.call('DEL', KEYS[1])
  return {'refused', 'expired'}
end
if not h[3] then
  redis.call('HSET', KEYS[1], 'client', ARGV[1], 'sid', ARGV[3], 'at', ARGV[2], 'open', 1, 'closed', 0)
  return {'first', h[1], ARGV[3]}
end
if h[3] == ARGV[1] and now - tonumber(h[5]) <= tonumber(ARGV[4]) and (tonumber(h[6] or '1') > 0 or now - tonumber(h[7] or '0') <= tonumber(ARGV[5])) then
  redis.call('HINCRBY', KEYS[1], 'open', 1)
  return {'again', h[1], h[4]}
end
return {'refused', 'replay'}
`;

/** ARGV: now. One connection a redemption counted has ended. */
const RELEASE_LUA = `
local open = tonumber(redis.call('HGET', KEYS[1], 'open') or '0')
if open <= 0 then return 0 end
redis.call('HSET', KEYS[1], 'open', open - 1)
if open == 1 then redis.call('HSET', KEYS[1], 'closed', ARGV[1]) end
return 1
`;

type Script = (...args: Array<string | number>) => Promise<unknown>;

export class RedisAuthStore implements AuthStore {
  private readonly conn: Redis;
  /** Subscribed to the revocation channel. */
  private readonly feed: Redis;
  private readonly channel: string;
  /** Tells this store's own messages from other nodes'. */
  private readonly origin = randomBytes(6).toString('base64url');
  /** Revoked session id -> until (ms): the copy every check reads. */
  private readonly revoked = new Map<string, number>();
  private readonly onRevoked: ((sessionId: string) => void) | undefined;
  private readonly prefix: string;
  private readonly graceMs: number;
  private readonly now: () => number;
  private readonly target: string;
  private closing: Promise<void> | undefined;

  /** Connect and load the revocations; rejects with DirectoryUnavailableError if Redis cannot be reached. */
  static async open(opts: RedisAuthStoreOptions): Promise<RedisAuthStore> {
    const store = new RedisAuthStore(opts);
    try {
      await Promise.all([store.conn.connect(), store.feed.connect()]);
      await store.feed.subscribe(store.channel);
      await store.loadRevocations();
    } catch (err) {
      store.conn.disconnect();
      store.feed.disconnect();
      throw new DirectoryUnavailableError(`auth store: cannot reach Redis at ${store.target}: ${(err as Error).message}`, { cause: err });
    }
    // Messages published while a connection was down are gone: subscribe again and load again on
    // every reconnect (the connection does not resubscribe by itself: createConnection).
    // Loaded once subscribed, so that nothing published in between is missed.
    store.feed.on('ready', () => {
      store.feed.subscribe(store.channel).then(
        () => store.reloadQuietly(),
        () => undefined,
      );
    });
    store.conn.on('ready', () => store.reloadQuietly());
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
    this.channel = `${this.prefix}revoked`;
    this.onRevoked = opts.onRevoked;
    this.feed = createConnection(opts.redis, { connectTimeout: Math.max(timeout, 1_000), connectionName: `${opts.connectionName ?? 'oneport-auth'}:revoked` });
    this.feed.on('error', () => undefined);
    this.feed.on('message', (channel: string, message: string) => {
      if (channel === this.channel) this.received(message);
    });
    this.conn.defineCommand('oneportRevoke', { lua: REVOKE_LUA, numberOfKeys: 2 });
    this.conn.defineCommand('oneportTicketPut', { lua: PUT_LUA, numberOfKeys: 1 });
    this.conn.defineCommand('oneportTicketRedeem', { lua: REDEEM_LUA, numberOfKeys: 1 });
    this.conn.defineCommand('oneportTicketRelease', { lua: RELEASE_LUA, numberOfKeys: 1 });
  }

  private script(name: 'oneportTicketPut' | 'oneportTicketRedeem' | 'oneportTicketRelease' | 'oneportRevoke'): Script {
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

  async redeemTicket(id: string, client: string, now: number, newSessionId: string, reuse: TicketReuse): Promise<Redemption> {
    const r = await this.call<[string, string, string?]>('redeem ticket', () =>
      this.script('oneportTicketRedeem')(`${this.prefix}t:${id}`, client, now, newSessionId, reuse.windowMs, reuse.afterCloseMs),
    );
    const [outcome, a, sid] = r;
    if (outcome === 'first' || outcome === 'again') return { outcome, record: JSON.parse(a) as TicketRecord, sessionId: sid ?? '' };
    if (a === 'unknown' || a === 'expired' || a === 'replay') return { outcome: 'refused', reason: a };
    throw new Error(`auth store: unexpected redemption reply ${JSON.stringify(r)}`);
  }

  /** While Redis is away the count stays up; the reuse window still ends the ticket. */
  async releaseTicket(id: string, now: number): Promise<void> {
    await this.call('release ticket', () => this.script('oneportTicketRelease')(`${this.prefix}t:${id}`, now)).catch(() => undefined);
  }

  async revokeSession(sessionId: string, until: number): Promise<void> {
    const ttl = until - this.now() + this.graceMs;
    if (ttl <= 0) return;
    await this.call('revoke session', () => this.script('oneportRevoke')(`${this.prefix}r:${sessionId}`, this.channel, until, ttl, `${this.origin} ${sessionId} ${until}`));
    this.remember(sessionId, until);
  }

  /** From this node's copy: no Redis round trip, and an answer while Redis is away. */
  async isSessionRevoked(sessionId: string): Promise<boolean> {
    const until = this.revoked.get(sessionId);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.revoked.delete(sessionId);
    return false;
  }

  private remember(sessionId: string, until: number): void {
    if (until > (this.revoked.get(sessionId) ?? 0)) this.revoked.set(sessionId, until);
  }

  /** `<origin> <session id> <until>` from the channel. */
  private received(message: string): void {
    if (message.length > 200) return;
    const [origin, sessionId, untilText] = message.split(' ');
    const until = Number(untilText);
    if (!origin || !sessionId || !Number.isSafeInteger(until)) return;
    this.remember(sessionId, until);
    if (origin !== this.origin && until > this.now()) this.onRevoked?.(sessionId);
  }

  /** Every revocation in Redis into the copy, and the expired ones out of it. */
  private async loadRevocations(): Promise<void> {
    const now = this.now();
    for (const [id, until] of this.revoked) if (until <= now) this.revoked.delete(id);
    const match = `${this.prefix}r:*`;
    const skip = `${this.prefix}r:`.length;
    let cursor = '0';
    do {
      const [next, keys] = await this.call<[string, string[]]>('load revocations', () => this.conn.scan(cursor, 'MATCH', match, 'COUNT', SCAN_COUNT));
      cursor = next;
      if (keys.length === 0) continue;
      const values = await this.call<Array<string | null>>('load revocations', () => this.conn.mget(...keys));
      keys.forEach((key, i) => {
        const until = Number(values[i]);
        if (Number.isSafeInteger(until) && until > now) this.remember(key.slice(skip), until);
      });
    } while (cursor !== '0');
  }

  /** After a reconnect; a failure here is retried at the next one. */
  private reloadQuietly(): void {
    if (this.closing) return;
    this.loadRevocations().catch(() => undefined);
  }

  /** Idempotent. */
  close(): Promise<void> {
    const quit = (c: Redis): Promise<void> =>
      c.quit().then(
        () => undefined,
        () => c.disconnect(),
      );
    this.closing ??= Promise.all([quit(this.conn), quit(this.feed)]).then(() => undefined);
    return this.closing;
  }
}
