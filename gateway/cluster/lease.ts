/**
 * Leadership: a lease in Redis with a fencing epoch.
 *
 * `<prefix>leader` holds `<node>|<epoch>` with a PX expiry of `leaseMs`; `<prefix>epoch` counts
 * elections. Taking an absent lease is one script: the epoch becomes max(INCR, highest epoch this
 * node has seen + 1), so it never goes back even when a Redis failover lost the last increments.
 * The token `<node>|<epoch>` is the fence: every leader-only write checks, in its own script, that
 * the lease still holds exactly that token (directory/redis.ts).
 *
 * The leader renews every `renewMs`. It counts its lease from the moment it SENT the last
 * successful renewal, on its monotonic clock, and stops acting as leader `leaseMs - margin` after
 * that: Redis started the expiry later than that moment, so the lease cannot expire elsewhere
 * while this node still believes it leads (clock drift within the margin). A pause (SIGSTOP, a
 * long GC) is caught the same way: on waking, `isLeader()` reads the clock before any write.
 *
 * Followers try to take the lease every `pollMs`; while it exists they only learn who leads. A
 * follower that loses Redis for a moment changes nothing: only the lease's expiry in Redis, which
 * needs the leader itself to stop renewing, starts an election.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.js';
import { NotLeaderError } from '../directory/redis.js';

/** ARGV: node, leaseMs, highest epoch seen. Returns {1, token} when taken, {0, current token}. */
const ACQUIRE_LUA = `
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
local token = ARGV[1] .. '|' .. e
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token}
`;

/** ARGV: token, leaseMs. Returns 1 when renewed, else the current token ('' when none). */
const RENEW_LUA = `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return cur or ''
`;

/** ARGV: token. Gives the lease up (graceful stop) if we still hold it. */
const RESIGN_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

export interface LeaderInfo {
  readonly node: string;
  readonly epoch: number;
}

export function parseToken(token: string | null | undefined): LeaderInfo | undefined {
  if (!token) return undefined;
  const bar = token.lastIndexOf('|');
  const epoch = Number(token.slice(bar + 1));
  if (bar <= 0 || !Number.isSafeInteger(epoch)) return undefined;
  return { node: token.slice(0, bar), epoch };
}

export interface LeaseOptions {
  readonly redis: Redis;
  readonly key: string;
  readonly epochKey: string;
  readonly nodeId: string;
  readonly leaseMs: number;
  readonly renewMs: number;
  readonly pollMs: number;
  /** The highest epoch this node saw before (persisted by the caller). */
  readonly initialEpoch?: number;
  readonly log?: Logger | undefined;
  /** Whether this node may stand for election now (asked before each attempt). @default always */
  readonly eligible?: () => boolean;
}

type Script = (...args: Array<string | number>) => Promise<unknown>;

/**
 * Events: 'elected' (LeaderInfo), 'stepped-down' ({epoch, reason}), 'leader' (LeaderInfo |
 * undefined, whenever who-leads changes as far as this node knows), 'epoch' (highest seen).
 */
export class LeaderLease extends EventEmitter {
  private token: string | undefined;
  private validUntil = 0;
  private known: LeaderInfo | undefined;
  private highest: number;
  private timer: NodeJS.Timeout | undefined;
  private expiry: NodeJS.Timeout | undefined;
  private stopped = false;
  private busy = false;
  /** Lease time the leader gives up early, against clock drift between here and Redis. */
  private readonly margin: number;
  private readonly acquire: Script;
  private readonly renew: Script;
  private readonly resign: Script;

  constructor(private readonly opts: LeaseOptions) {
    super();
    this.highest = opts.initialEpoch ?? 0;
    this.margin = Math.max(50, Math.floor(opts.leaseMs / 6));
    const r = opts.redis as unknown as Record<string, Script>;
    opts.redis.defineCommand('oneportLeaseAcquire', { lua: ACQUIRE_LUA, numberOfKeys: 2 });
    opts.redis.defineCommand('oneportLeaseRenew', { lua: RENEW_LUA, numberOfKeys: 1 });
    opts.redis.defineCommand('oneportLeaseResign', { lua: RESIGN_LUA, numberOfKeys: 1 });
    this.acquire = r.oneportLeaseAcquire!.bind(opts.redis);
    this.renew = r.oneportLeaseRenew!.bind(opts.redis);
    this.resign = r.oneportLeaseResign!.bind(opts.redis);
  }

  start(): void {
    void this.tick();
  }

  /** True only while this node holds an unexpired lease by its own clock. */
  isLeader(): boolean {
    return this.token !== undefined && performance.now() < this.validUntil;
  }

  /** The fencing token for a leader-only write; throws NotLeaderError when we do not lead. */
  fenceToken(): string {
    if (!this.isLeader()) {
      if (this.token !== undefined) this.stepDown('lease-expired-locally');
      throw new NotLeaderError();
    }
    return this.token!;
  }

  /** A write was refused by the fence in Redis: someone else leads. */
  fenced(): void {
    if (this.token !== undefined) this.stepDown('fenced');
  }

  leader(): LeaderInfo | undefined {
    if (this.isLeader()) return parseToken(this.token);
    return this.known;
  }

  highestEpoch(): number {
    return this.highest;
  }

  /** A follower's next attempt to take the lease, now (the leader's lease was just removed). */
  pollNow(): void {
    if (this.token === undefined) this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    if (this.stopped || this.busy) return;
    this.busy = true;
    try {
      if (this.token !== undefined) await this.renewOnce();
      else await this.tryAcquire();
    } catch (err) {
      // Redis unreachable or slow: a leader keeps leading until its lease runs out locally.
      this.opts.log?.debug({ event: 'lease-error', err: (err as Error).message }, 'leader lease call failed');
    } finally {
      this.busy = false;
      this.schedule(this.token !== undefined ? this.opts.renewMs : this.opts.pollMs);
    }
  }

  private async tryAcquire(): Promise<void> {
    if (this.opts.eligible && !this.opts.eligible()) return;
    const sentAt = performance.now();
    const [taken, token] = (await this.acquire(this.opts.key, this.opts.epochKey, this.opts.nodeId, this.opts.leaseMs, this.highest)) as [number, string];
    const info = parseToken(token);
    if (!info) return;
    this.see(info.epoch);
    if (taken === 1 || info.node === this.opts.nodeId) {
      // Ours: newly taken, or still ours from before a restart of this process within the lease.
      if (taken !== 1) {
        // A lease from an earlier life of this node: we cannot know what that life wrote, so let
        // it expire rather than adopt it (a fresh election bumps the epoch).
        this.setKnown(info);
        return;
      }
      this.token = token;
      this.extend(sentAt);
      this.setKnown(info);
      this.opts.log?.info({ event: 'leader-elected', node: info.node, epoch: info.epoch }, `this node leads the cluster (epoch ${info.epoch})`);
      this.emit('elected', info);
      return;
    }
    this.setKnown(info);
  }

  private async renewOnce(): Promise<void> {
    const token = this.token!;
    const sentAt = performance.now();
    const res = await this.renew(this.opts.key, token, this.opts.leaseMs);
    if (this.token !== token) return;
    if (res === 1) {
      if (performance.now() < this.validUntil) this.extend(sentAt);
      else this.stepDown('lease-expired-locally');
      return;
    }
    this.stepDown('lost');
    const other = parseToken(res as string);
    if (other) this.see(other.epoch);
    this.setKnown(other);
  }

  private extend(sentAt: number): void {
    this.validUntil = sentAt + this.opts.leaseMs - this.margin;
    clearTimeout(this.expiry);
    // Wakes a leader whose renewals stopped getting through, so it stops acting at once.
    this.expiry = setTimeout(() => {
      if (this.token !== undefined && !this.isLeader()) this.stepDown('lease-expired-locally');
    }, Math.max(0, this.validUntil - performance.now()) + 1);
  }

  private stepDown(reason: string): void {
    const info = parseToken(this.token);
    this.token = undefined;
    this.validUntil = 0;
    clearTimeout(this.expiry);
    if (this.known?.node === this.opts.nodeId) this.setKnown(undefined);
    this.opts.log?.warn({ event: 'leader-stepped-down', epoch: info?.epoch, reason }, `this node no longer leads (${reason})`);
    this.emit('stepped-down', { epoch: info?.epoch, reason });
    this.schedule(0);
  }

  private see(epoch: number): void {
    if (epoch > this.highest) {
      this.highest = epoch;
      this.emit('epoch', epoch);
    }
  }

  private setKnown(info: LeaderInfo | undefined): void {
    if (info?.node === this.known?.node && info?.epoch === this.known?.epoch) return;
    this.known = info;
    this.emit('leader', info);
  }

  /** Give the lease up now (another node should lead); this node may stand again when eligible. */
  async abdicate(reason: string): Promise<void> {
    const token = this.token;
    if (token === undefined) return;
    this.stepDown(reason);
    await this.resign(this.opts.key, token).catch(() => {});
  }

  /** Stop; a leader gives its lease up so the next one is elected without waiting for expiry. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.expiry);
    const token = this.token;
    this.token = undefined;
    if (token) await this.resign(this.opts.key, token).catch(() => {});
  }
}
