/**
 * Console sessions counted cluster-wide in Redis, for the session caps (tunnel/session-caps.ts).
 *
 * | key                   | type | content                                                        |
 * |-----------------------|------|----------------------------------------------------------------|
 * | `<prefix>caps:user:<name>` | zset | `<session id>@<node>` -> expiry (ms, Redis's clock)        |
 * | `<prefix>caps:vm:<name>`   | zset | the same, per VM                                           |
 *
 * A member says "node N holds (part of) session S"; a session counts once however many nodes
 * hold parts of it (a SPICE client's channels through two nodes behind a balancer). Only sessions
 * under a cap (> 0) are written: with no caps configured there is no traffic at all.
 *
 * - Admission is one Lua script: drop expired members, count distinct sessions, refuse a new one
 *   when a cap is full, else add it; so two nodes cannot both take the last slot.
 * - Every node refreshes the expiry of what it holds each heartbeat period (one script per batch);
 *   a crashed node's members expire after `ttlMs`, freeing their slots. A cap set while sessions
 *   run counts them from the next refresh.
 * - The node removes its member when its last tunnel of the session ends.
 * Expiries use Redis's clock (TIME), so the nodes' clocks do not matter.
 */
import type { Redis } from 'ioredis';
import type { SessionCapValues } from '../tunnel/policy.js';
import type { CapScope, CountedSession, SessionCounter } from '../tunnel/session-caps.js';

/** KEYS: user set, VM set. ARGV: session id, node, ttl ms, user cap, VM cap (0 = not counted there). */
const ADMIT_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sid = ARGV[1]
local member = sid .. '@' .. ARGV[2]
local ttl = tonumber(ARGV[3])
local caps = { tonumber(ARGV[4]), tonumber(ARGV[5]) }
local counts = { 0, 0 }
local known = false
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local seen = {}
    for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
      local s = string.match(m, '^(.*)@[^@]*$')
      if s == sid then known = true end
      if s and not seen[s] then
        seen[s] = true
        counts[i] = counts[i] + 1
      end
    end
  end
end
if not known then
  if caps[1] > 0 and counts[1] >= caps[1] then return 'user' end
  if caps[2] > 0 and counts[2] >= caps[2] then return 'vm' end
end
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZADD', KEYS[i], now + ttl, member)
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 'ok'
`;

/** KEYS: sets; ARGV: ttl ms, then one member per key. */
const REFRESH_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return #KEYS
`;

/** Members refreshed per script call. */
const REFRESH_BATCH = 500;

type Script = (...args: Array<string | number>) => Promise<unknown>;

export interface RedisSessionCounterOptions {
  readonly redis: Redis;
  readonly prefix: string;
  readonly nodeId: string;
  /** Refresh period (config cluster.heartbeatMs). */
  readonly refreshMs: number;
  /** How long a member outlives its last refresh: a crashed node's sessions stop counting after this. */
  readonly ttlMs: number;
  /** A refresh that failed (Redis away): for a debug line. */
  readonly onRefreshError?: (err: Error) => void;
}

export class RedisSessionCounter implements SessionCounter {
  private readonly admitScript: Script;
  private readonly refreshScript: Script;
  private timer: NodeJS.Timeout | undefined;
  private refreshing = false;

  constructor(private readonly opts: RedisSessionCounterOptions) {
    opts.redis.defineCommand('oneportCapAdmit', { lua: ADMIT_LUA, numberOfKeys: 2 });
    opts.redis.defineCommand('oneportCapRefresh', { lua: REFRESH_LUA });
    const r = opts.redis as unknown as Record<string, Script>;
    this.admitScript = r.oneportCapAdmit!.bind(opts.redis);
    this.refreshScript = r.oneportCapRefresh!.bind(opts.redis);
  }

  userKey(name: string): string {
    return `${this.opts.prefix}caps:user:${name}`;
  }

  vmKey(name: string): string {
    return `${this.opts.prefix}caps:vm:${name}`;
  }

  private member(s: CountedSession): string {
    return `${s.id}@${this.opts.nodeId}`;
  }

  async admit(s: CountedSession, caps: SessionCapValues): Promise<'ok' | CapScope> {
    const r = await this.admitScript(this.userKey(s.user), this.vmKey(s.vm), s.id, this.opts.nodeId, this.opts.ttlMs, caps.user, caps.vm);
    if (r === 'ok' || r === 'user' || r === 'vm') return r;
    throw new Error(`session caps: unexpected answer ${JSON.stringify(r)}`);
  }

  release(s: CountedSession): void {
    const member = this.member(s);
    this.opts.redis
      .multi()
      .zrem(this.userKey(s.user), member)
      .zrem(this.vmKey(s.vm), member)
      .exec()
      .catch(() => undefined); // a member left behind expires
  }

  start(held: () => Iterable<{ readonly session: CountedSession; readonly caps: SessionCapValues }>): void {
    const tick = (): void => {
      if (this.refreshing) return;
      this.refreshing = true;
      void this.refresh(held())
        .catch((err: Error) => this.opts.onRefreshError?.(err))
        .finally(() => (this.refreshing = false));
    };
    this.timer = setInterval(tick, this.opts.refreshMs);
    this.timer.unref();
  }

  /** Refresh every member of `held` under a cap now; exposed for tests. */
  async refresh(held: Iterable<{ readonly session: CountedSession; readonly caps: SessionCapValues }>): Promise<void> {
    let keys: string[] = [];
    let members: string[] = [];
    const flush = async (): Promise<void> => {
      if (keys.length === 0) return;
      const k = keys;
      const m = members;
      keys = [];
      members = [];
      await this.refreshScript(k.length, ...k, this.opts.ttlMs, ...m);
    };
    for (const { session, caps } of held) {
      const member = this.member(session);
      if (caps.user > 0) keys.push(this.userKey(session.user)), members.push(member);
      if (caps.vm > 0) keys.push(this.vmKey(session.vm)), members.push(member);
      if (keys.length >= REFRESH_BATCH) await flush();
    }
    await flush();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
