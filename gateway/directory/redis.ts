/**
 * The cluster directory: users, VMs and signing keys in Redis (standalone or Sentinel, through
 * ioredis), mirrored in each gateway's memory (mirror.ts) so the data path never waits on Redis.
 *
 * Key schema (every key starts with `prefix`, default `oneport:{dir}:`; the `{dir}` hash tag keeps
 * the keys in one slot so the scripts stay valid behind a Redis Cluster proxy too):
 *
 * | key              | type    | content                                                        |
 * |------------------|---------|----------------------------------------------------------------|
 * | `<prefix>users`   | hash    | user name -> UserRecord JSON                                   |
 * | `<prefix>vms`     | hash    | VM name -> VmRecord JSON                                       |
 * | `<prefix>keys`    | string  | KeyRing JSON (ticket and token signing keys)                   |
 * | `<prefix>version` | string  | integer, +1 per change; absent = an empty (or emptied) Redis   |
 * | `<prefix>changes` | stream  | the change feed: `v` version, `k` user/vm/keys/seed, `n` name, |
 * |                  |         | `d` the record's JSON after the change (absent for a delete);  |
 * |                  |         | capped with `XADD MAXLEN ~ changesMaxLen`                      |
 *
 * Writes: each is ONE Lua script that checks the key types first (so no command inside can fail
 * after the first write), then writes the record, INCRs the version and XADDs the entry. A script
 * runs atomically and replicates as one unit, so readers and replicas see all of a change or none.
 * No offline queue and no automatic resend: while Redis is unreachable a write rejects at once
 * (or after `commandTimeoutMs` on a silent network) with `DirectoryUnavailableError`. A write
 * whose reply was lost may still have been applied (the mirror then shows it); it is never
 * applied in part.
 *
 * The mirror: a paged snapshot (an O(1) script for the key ring, the version and the feed's last
 * id; both hashes by HSCAN pages, each applied to the mirror in place as it arrives; then the feed
 * from that id replayed over them: see snapshot()), so no call blocks Redis for more than a page
 * and a resync never holds a second copy of the directory, then XREAD BLOCK on a dedicated connection from
 * that id, applying entries strictly in version order. A full resync (snapshot again, 'change' for each record that differs, then one
 * 'resync' event) follows a version gap, a trimmed feed, a reconnect, a new Redis master (its
 * run_id changed), or a version mismatch seen by the periodic check (`checkIntervalMs`). While
 * Redis is away, reads keep serving the last mirror; `staleness()` says how old it is.
 *
 * A Redis that comes back empty (restarted without persistence, or flushed) lost the directory.
 * A mirror is written back (only if the version key is still absent, or holds nothing but a key
 * ring a fresh node just published, in one script), so routes and signing keys survive and the
 * version keeps growing. In a cluster (`fence`), only the leader writes it back, fenced like every
 * leader write, when its `reseed()` gate says so (cluster.ts: after the other nodes had time to
 * report their mirrors), and never from a mirror older than the highest version this node saw
 * acknowledged (its own writes' replies, the version key, the feed, the other nodes' heartbeats:
 * `noteAcknowledged`). Until then every node keeps serving its mirror, refuses writes, and asks
 * again every `reseedPollMs`: nobody adopts the empty Redis. Without `fence`, the first instance to
 * notice writes its mirror back; with `reseed: false` the mirrors follow the empty Redis instead
 * (and `version()` goes back).
 */
import { setTimeout as delay } from 'node:timers/promises';
import { Redis, type RedisOptions } from 'ioredis';
import type { Directory, DirectoryChange, KeyRing, PutVmOptions, UserRecord, VmRecord } from './directory.js';
import { DirectoryMirror, compareIds, parseEntry, type ChangeEntry, type LoadResult } from './mirror.js';
import { MirroredDirectory } from './mirrored.js';
import { newSigningKey } from './memory.js';
import type { Logger } from '../log.js';
import { OneportError } from '../errors.js';
import { followSentinelSwitches } from './sentinel-follow.js';
import { parsePage, type ParsedPage } from './page.js';
import { PAGE_RETRY_MS, pagedRead } from './paged.js';
import { ScanThread, ScanThreadFailed } from './scan-thread.js';

export interface RedisDirectoryOptions {
  /**
   * Where Redis is: a `redis://` or `rediss://` URL (`redis://user:pass@host:port/db`), or ioredis
   * options: `host`/`port`, or `sentinels: [{host, port}]` + `name` (the master group) for
   * Sentinel, `tls`, `username`/`password`, `sentinelPassword`, `db`, `retryStrategy`. The options
   * that decide write semantics (offline queue, resend, RESP version) are set here and win.
   */
  readonly redis: string | RedisOptions;
  /** Prefix of every key, so several directories (or tests) can share a Redis. @default 'oneport:{dir}:' */
  readonly prefix?: string;
  /** Change feed bound: `XADD MAXLEN ~` this many entries. @default 10000 */
  readonly changesMaxLen?: number;
  /** Safety net: compare the version in Redis with the mirror's this often. @default 5000 ms */
  readonly checkIntervalMs?: number;
  /** How long one XREAD blocks waiting for changes. @default 2000 ms */
  readonly blockMs?: number;
  /** A write, snapshot or check without an answer for this long fails. @default 2000 ms */
  readonly commandTimeoutMs?: number;
  /** Write the mirror back into a Redis that lost the directory. @default true */
  readonly reseed?: boolean;
  /** While a Redis that lost the directory waits for its reseed, look again this often. @default 250 ms */
  readonly reseedPollMs?: number;
  /**
   * Fields per HSCAN page (and feed entries per XRANGE) of a snapshot: ~0.25 ms of Redis time a
   * call at ~300 bytes a record (1M VMs), so a Redis preempted in the middle of one rarely holds
   * it 10 ms. Halved from 500 once a scan thread made the round trips: no cost measured
   * (bench/SCALE.md, round 4). @default 250
   */
  readonly snapshotPage?: number;
  /**
   * A snapshot of at least this many records (users and VMs) is scanned and parsed by a thread of
   * its own (scan-thread.ts), with a third connection, while the main thread applies its pages: a
   * large start uses two cores. Smaller ones load on the main thread: a thread costs ~0.15 s to
   * start (built; ~0.5 s from the sources under tsx), about what it saves at 100k records (a load
   * of ~0.7 s of CPU on one thread). 0: always; Infinity: never. @default 100000
   */
  readonly scanThreadMin?: number;
  /** Most entries applied per XREAD. @default 500 */
  readonly readBatch?: number;
  /** Name of the connections in `CLIENT LIST`. @default 'oneport-directory' */
  readonly connectionName?: string;
  readonly log?: Logger;
  /** @default Date.now */
  readonly now?: () => number;
  /**
   * Cluster: the leader lease's key and this node's fencing token for writes. `token()` returns
   * the token while this node leads, and throws (NotLeaderError) when it does not; every write
   * but `putVm(..., {unfenced})` carries it into its script. Unset: writes are unfenced.
   */
  readonly fence?: { readonly key: string; token(): string; onFenced?(): void; reseed?(): ReseedVerdict };
  /**
   * Cluster: the key ring is kept sealed in Redis (cluster/seal.ts): `seal` for what this node
   * writes, `open` for what it reads (a ring written before sealing passes through). Unset: clear.
   */
  readonly seal?: { seal(json: string): string; open(text: string): string | undefined };
  /**
   * Told about every full load into the mirror as it goes (workers/feed.ts hands its pages, parsed
   * once here or in the scan thread, to the node's workers): `begin` at each attempt, `page` for
   * each page applied, `end` with the head and the feed entries endLoad replayed over the pages.
   */
  readonly loads?: LoadWatcher;
  /**
   * Keep the VMs indexed by user and group (vmsForUser; default true). A node's primary opens its
   * mirror without: it serves no portal, and its workers' copies have the index.
   */
  readonly userIndex?: boolean;
}

/** What RedisDirectoryOptions.loads is told of each full load. */
export interface LoadWatcher {
  begin(): void;
  page(page: ParsedPage): void;
  end(head: { keys: string | undefined; version: number; lastId: string }, entries: readonly ChangeEntry[]): void;
}

/**
 * May this node write its mirror back into a Redis that lost the directory now? `go`, or why not
 * yet: it does not lead, or it leads but still gathers the other nodes' mirror versions.
 */
export type ReseedVerdict = 'go' | 'not-leader' | 'gathering';

/** Why a Redis that lost the directory is still empty, as far as this node knows. */
export type ReseedWait = Exclude<ReseedVerdict, 'go'> | 'stale-mirror';

export type ResyncReason = 'start' | 'reconnect' | 'master-changed' | 'gap' | 'trimmed' | 'invalid-entry' | 'version-mismatch' | 'seed';

export interface ResyncEvent {
  readonly reason: ResyncReason;
  /** Mirror version before and after. */
  readonly from: number;
  readonly to: number;
  /** Records (and the key ring) that differed. */
  readonly changed: number;
  /** True when this node wrote its mirror back into an emptied Redis. */
  readonly reseeded: boolean;
  /**
   * True when nothing was loaded: Redis's change feed still held the mirror's place (a reconnect
   * to the same Redis, or a new master that has every entry), and the feed is read on from there;
   * what changed meanwhile arrives as 'change' events.
   */
  readonly caughtUp?: boolean;
}

export interface Staleness {
  /** The mirror is fed live and writes can reach Redis. */
  readonly connected: boolean;
  /** When the mirror was last known to equal Redis (ms since the epoch). */
  readonly lastSyncAt: number;
  readonly ageMs: number;
}

/** Redis cannot be reached (or did not answer in time): the write was not done, or not confirmed. */
export class DirectoryUnavailableError extends OneportError {
  constructor(message: string, opts?: { cause?: unknown }) {
    super('ONEPORT_ERR_DIRECTORY_UNAVAILABLE', message, { retryAfter: 2, ...opts });
    this.name = 'DirectoryUnavailableError';
  }
}

/** A leader-only write refused: this node does not lead (locally known, or fenced in Redis). */
export class NotLeaderError extends OneportError {
  constructor(message?: string) {
    super('ONEPORT_ERR_NOT_LEADER', message, { retryAfter: 1 });
    this.name = 'NotLeaderError';
  }
}

/** A paged snapshot whose feed was trimmed under it this many times in a row fails. */
const SNAPSHOT_TRIES = 5;

const DEFAULTS = {
  prefix: 'oneport:{dir}:',
  changesMaxLen: 10_000, // entries
  checkIntervalMs: 5_000, // 5 seconds
  blockMs: 2_000, // 2 seconds
  commandTimeoutMs: 2_000, // 2 seconds
  readBatch: 500, // entries
  snapshotPage: 250, // fields or entries per call
  scanThreadMin: 100_000, // records
  connectionName: 'oneport-directory',
  reseedPollMs: 250, // ms
} as const;

// Every script gets the same KEYS: 1 users, 2 vms, 3 keys, 4 version, 5 changes, 6 the leader
// lease (cluster/lease.ts). Every write script's first ARGV is the fencing token ('' = unfenced):
// when given, the write happens only if the lease still holds exactly that token, checked in the
// same script, so a paused or partitioned ex-leader can never write (FENCE is removed from ARGV,
// the other arguments keep their positions).
const FENCE = `
local fence = table.remove(ARGV, 1)
if fence ~= '' and redis.call('GET', KEYS[6]) ~= fence then
  return redis.error_reply('ONEPORT_FENCED this node no longer holds the leader lease')
end
`;
const PRELUDE = `${FENCE}
local function wrongType(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then return key .. ' holds a ' .. t .. ', not a ' .. want end
  return nil
end
local function invalid()
  local e = wrongType(KEYS[1], 'hash') or wrongType(KEYS[2], 'hash') or wrongType(KEYS[3], 'string')
    or wrongType(KEYS[4], 'string') or wrongType(KEYS[5], 'stream')
  if e then return e end
  local v = redis.call('GET', KEYS[4])
  if v and not tonumber(v) then return KEYS[4] .. ' is not an integer' end
  return nil
end
local bad = invalid()
if bad then return redis.error_reply('ONEPORT_DIRECTORY ' .. bad) end
`;

/**
 * A record write into a Redis without a version lost the directory (a fresh one always gets a key
 * ring, and so a version, first): it waits for its reseed rather than start a new history that
 * the reseed could then not overwrite.
 */
const NOT_EMPTIED = `
if redis.call('EXISTS', KEYS[4]) == 0 then
  return redis.error_reply('ONEPORT_EMPTIED the directory in Redis was lost and awaits its reseed')
end
`;

/**
 * ARGV: kind (user|vm), name, json, maxlen, expected epoch of the stored VM ('' = any). Returns
 * the new version, or 0 when the stored VM's epoch is not the expected one (compare-and-set).
 * The change entry's `w` field names the fencing token that wrote it.
 */
const PUT_LUA = `${PRELUDE}${NOT_EMPTIED}
local hash = KEYS[2]
if ARGV[1] == 'user' then hash = KEYS[1] end
if ARGV[5] and ARGV[5] ~= '' then
  local cur = redis.call('HGET', hash, ARGV[2])
  if not cur then return 0 end
  local ok, rec = pcall(cjson.decode, cur)
  if not ok or type(rec) ~= 'table' or tostring(rec['epoch']) ~= ARGV[5] then return 0 end
end
redis.call('HSET', hash, ARGV[2], ARGV[3])
local v = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'v', v, 'k', ARGV[1], 'n', ARGV[2], 'd', ARGV[3], 'w', fence)
return v
`;

/**
 * A batch of VM writes at one version (a failover): each compare-and-set on its stored epoch,
 * ONE feed entry (`k` vms, a field `r:<name>` with the JSON per VM written) instead of one per VM.
 * ARGV: maxlen, count, then name, JSON, expected epoch per VM. Returns {version or 0, {1|0 per VM}}.
 */
const PUT_VMS_LUA = `${PRELUDE}${NOT_EMPTIED}
local results, fields = {}, {}
for j = 0, tonumber(ARGV[2]) - 1 do
  local name, json, want = ARGV[3 + 3 * j], ARGV[4 + 3 * j], ARGV[5 + 3 * j]
  local ok = 0
  local cur = redis.call('HGET', KEYS[2], name)
  if cur then
    local good, rec = pcall(cjson.decode, cur)
    if good and type(rec) == 'table' and tostring(rec['epoch']) == want then
      redis.call('HSET', KEYS[2], name, json)
      fields[#fields + 1] = 'r:' .. name
      fields[#fields + 1] = json
      ok = 1
    end
  end
  results[#results + 1] = ok
end
if #fields == 0 then return {0, results} end
local v = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'v', v, 'k', 'vms', 'n', '', 'w', fence, unpack(fields))
return {v, results}
`;

/** Most VMs in one putVms script: bounds its Redis time (~5 us a VM) and its Lua stack (unpack). */
export const PUT_VMS_MAX = 500;

/** ARGV: kind, name, maxlen. Returns the new version, or 0 if there was no such record. */
const DEL_LUA = `${PRELUDE}${NOT_EMPTIED}
local hash = KEYS[2]
if ARGV[1] == 'user' then hash = KEYS[1] end
if redis.call('HDEL', hash, ARGV[2]) == 0 then return 0 end
local v = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'v', v, 'k', ARGV[1], 'n', ARGV[2], 'w', fence)
return v
`;

/** Compare-and-set the key ring. ARGV: expected JSON ('' = none yet), new JSON, maxlen. Returns the new version or 0. */
const KEYS_CAS_LUA = `${PRELUDE}
local cur = redis.call('GET', KEYS[3]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
local v = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'v', v, 'k', 'keys', 'n', '', 'd', ARGV[2], 'w', fence)
return v
`;

/**
 * Write a whole mirror back into a Redis that lost the directory, only if the version key is
 * still absent, or Redis holds nothing but the key ring a fresh node published at version 1 (the
 * first writer wins, the others then load what it wrote). Fenced in a cluster: only the leader.
 * ARGV: maxlen, version, keys JSON ('' = none), user count, then user name/JSON pairs, then VM pairs.
 */
const SEED_LUA = `${FENCE}
local had = redis.call('GET', KEYS[4])
if had and not (had == '1' and redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0) then return 0 end
${PRELUDE.replace(FENCE, '')}
redis.call('DEL', KEYS[1], KEYS[2])
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) end
redis.call('SET', KEYS[4], ARGV[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'v', ARGV[2], 'k', 'seed', 'n', '', 'w', fence)
return 1
`;

/**
 * Where a paged snapshot starts: {keys or nil, version, last feed id, records in both hashes (to
 * choose a scan thread or not)}. O(1): the hashes are read afterwards with HSCAN, one bounded page
 * per call, so no call blocks Redis for long.
 */
const SNAPSHOT_HEAD_LUA = `
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local lastId = '0-0'
if last[1] then lastId = last[1][1] end
local records = redis.call('HLEN', KEYS[1]) + redis.call('HLEN', KEYS[2])
return {redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4]) or '0', lastId, records}
`;

/** A paged snapshot loaded into the mirror, not yet ended: where it stands and what to replay. */
interface SnapshotHead {
  readonly keys: string | undefined;
  /** The version and feed id after the entries. */
  readonly version: number;
  readonly lastId: string;
  /** The feed after the head, for the mirror's endLoad. */
  readonly entries: readonly ChangeEntry[];
  /** Records the pages held malformed (skipped). */
  readonly invalid: readonly string[];
  /** Records the pages held. */
  readonly users: number;
  readonly vms: number;
}

type Script = (...args: Array<string | number>) => Promise<unknown>;
interface Scripts {
  oneportDirPut: Script;
  oneportDirDel: Script;
  oneportDirPutVms: Script;
  oneportDirKeysCas: Script;
  oneportDirSeed: Script;
  oneportDirSnapshotHead: Script;
}

/**
 * Default reconnect backoff: 100 ms doubling to 500 ms, plus up to 100 ms of jitter. The cap is
 * what a Sentinel failover costs beyond Sentinel's own switch (a try costs a connect, or a question
 * to the sentinels): with 2 s, new tunnels came back 1.5-2 s after Sentinel named the new master.
 */
export function defaultRetryStrategy(times: number): number {
  return Math.min(100 * 2 ** Math.max(0, times - 1), 500) + Math.floor(Math.random() * 100);
}

/** Where a connection goes, for error messages (never the password). */
export function describeRedis(redis: string | RedisOptions): string {
  if (typeof redis === 'string') {
    try {
      const u = new URL(redis);
      return `${u.protocol}//${u.host}${u.pathname.length > 1 ? u.pathname : ''}`;
    } catch {
      return 'redis (unparsable URL)';
    }
  }
  if (redis.sentinels?.length) return `sentinel master "${redis.name ?? 'mymaster'}" via ${redis.sentinels.map((s) => `${s.host ?? 'localhost'}:${s.port ?? 26379}`).join(',')}`;
  return `redis://${redis.host ?? 'localhost'}:${redis.port ?? 6379}`;
}

/**
 * A connection whose failures surface at once: no offline queue, no resend on reconnect (a
 * script must never run twice because a reply was lost), RESP2 reply shapes.
 */
export function createConnection(redis: string | RedisOptions, extra: RedisOptions): Redis {
  const opts = connectionOptions(redis, extra);
  if (typeof redis === 'string') return new Redis(redis, opts);
  const conn = new Redis(opts);
  // With sentinels: reconnect the moment Sentinel switches the master, not at the next retry.
  followSentinelSwitches(conn, opts);
  return conn;
}

/** createConnection's options: the caller's, then `extra`, then those that decide write semantics. */
function connectionOptions(redis: string | RedisOptions, extra: RedisOptions): RedisOptions {
  const user = typeof redis === 'string' ? {} : redis;
  return {
    retryStrategy: defaultRetryStrategy,
    // How long a closing socket may linger before it is destroyed (ioredis default 2 s; its timer
    // also outlives sockets that were already closed, delaying process exit).
    disconnectTimeout: 200,
    ...user,
    ...extra,
    protocol: 2,
    lazyConnect: true,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    // ioredis's own resubscribe after a reconnect has nobody to catch it: without an offline
    // queue, a socket that closes right after 'ready' rejects it as an unhandled rejection.
    // Subscribers subscribe on every 'ready' themselves (auth/redis-store.ts, cluster/process-watch.ts).
    autoResubscribe: false,
    maxRetriesPerRequest: 0,
  };
}

/**
 * A failed Redis call as the error callers should see: Redis's own refusal (a ReplyError) as a
 * plain Error, our bugs (TypeError...) unchanged, and everything else (closed, refused, timed
 * out, not connected) as DirectoryUnavailableError.
 */
export function redisCallError(what: string, target: string, err: unknown): Error {
  if (err instanceof TypeError || err instanceof RangeError || err instanceof SyntaxError || err instanceof ReferenceError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof OneportError) return err;
  if (err instanceof Error && err.name === 'ReplyError') {
    if (message.startsWith('ONEPORT_FENCED')) return new NotLeaderError(`${what}: refused, this node no longer leads the cluster`);
    if (message.startsWith('ONEPORT_EMPTIED')) return new DirectoryUnavailableError(`${what}: Redis lost the directory; not done until the leader writes it back`, { cause: err });
    return new Error(`${what}: Redis refused: ${message}`, { cause: err });
  }
  return new DirectoryUnavailableError(`${what} failed: Redis at ${target} is unreachable (${message}); not done, or not confirmed`, { cause: err });
}

export class RedisDirectory extends MirroredDirectory implements Directory {
  readonly kind = 'redis' as const;
  /** The key ring's text as written to Redis: sealed in a cluster. */
  private readonly sealRing: (json: string) => string;
  private readonly cmd: Redis;
  private readonly reader: Redis;
  private readonly scripts: Scripts;
  private readonly k: { users: string; vms: string; keys: string; version: string; changes: string };
  private readonly opts: Required<Omit<RedisDirectoryOptions, 'log' | 'redis' | 'fence' | 'seal' | 'loads' | 'userIndex'>> & {
    log: Logger | undefined;
    target: string;
    fence: RedisDirectoryOptions['fence'];
    seal: RedisDirectoryOptions['seal'];
    loads: LoadWatcher | undefined;
  };
  private readonly redis: string | RedisOptions;
  /** The scan thread of the load in progress, if it has one. */
  private scanThread: ScanThread | undefined;
  /** Why loads no longer use a scan thread (one failed for good), once it happened. */
  private scanThreadOff: string | undefined;
  private runId: string | undefined;
  private readerId: number | undefined;
  private linkUp = false;
  private lastError: Error | undefined;
  private wasConnected = false;
  private lastSync = 0;
  private needResync: ResyncReason | undefined;
  /** The highest directory version this node saw Redis acknowledge itself (see noteAcknowledged). */
  private acked = 0;
  /** The last mirror version each other node reported (its heartbeat): each one was acknowledged. */
  private readonly peerAcked = new Map<string, number>();
  /** Redis lost the directory and this node waits for its reseed (serving its mirror meanwhile). */
  private awaiting: ReseedWait | undefined;
  private pendingRemote: number | undefined;
  private checking = false;
  private checkTimer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private readonly stopping = new AbortController();
  private closing: Promise<void> | undefined;
  /** A load into the mirror is under way (its records are then a mix of old and new). */
  private loadingMirror = false;

  /** Connect, load the snapshot and start tailing the change feed. Rejects if Redis cannot be reached. */
  static async open(opts: RedisDirectoryOptions): Promise<RedisDirectory> {
    const dir = new RedisDirectory(opts);
    try {
      await dir.start();
    } catch (err) {
      await dir.close();
      throw err;
    }
    return dir;
  }

  private constructor(options: RedisDirectoryOptions) {
    super(new DirectoryMirror(options.seal ? (text) => options.seal!.open(text) : undefined, { users: options.userIndex ?? true }));
    this.opts = {
      prefix: options.prefix ?? DEFAULTS.prefix,
      changesMaxLen: options.changesMaxLen ?? DEFAULTS.changesMaxLen,
      checkIntervalMs: options.checkIntervalMs ?? DEFAULTS.checkIntervalMs,
      blockMs: options.blockMs ?? DEFAULTS.blockMs,
      commandTimeoutMs: options.commandTimeoutMs ?? DEFAULTS.commandTimeoutMs,
      reseed: options.reseed ?? true,
      reseedPollMs: options.reseedPollMs ?? DEFAULTS.reseedPollMs,
      readBatch: options.readBatch ?? DEFAULTS.readBatch,
      snapshotPage: options.snapshotPage ?? DEFAULTS.snapshotPage,
      scanThreadMin: options.scanThreadMin ?? DEFAULTS.scanThreadMin,
      connectionName: options.connectionName ?? DEFAULTS.connectionName,
      now: options.now ?? Date.now,
      log: options.log,
      fence: options.fence,
      seal: options.seal,
      loads: options.loads,
      target: describeRedis(options.redis),
    };
    this.redis = options.redis;
    this.sealRing = options.seal ? (json) => options.seal!.seal(json) : (json) => json;
    const p = this.opts.prefix;
    this.k = { users: `${p}users`, vms: `${p}vms`, keys: `${p}keys`, version: `${p}version`, changes: `${p}changes` };
    const timeouts = { connectTimeout: Math.max(this.opts.commandTimeoutMs, 1_000) };
    this.cmd = createConnection(options.redis, { ...timeouts, commandTimeout: this.opts.commandTimeoutMs, connectionName: `${this.opts.connectionName}:cmd` });
    // No commandTimeout on the reader: XREAD BLOCK waits on purpose; tail() has its own deadline.
    this.reader = createConnection(options.redis, { ...timeouts, connectionName: `${this.opts.connectionName}:feed` });
    for (const [name, lua] of [
      ['oneportDirPut', PUT_LUA],
      ['oneportDirDel', DEL_LUA],
      ['oneportDirPutVms', PUT_VMS_LUA],
      ['oneportDirKeysCas', KEYS_CAS_LUA],
      ['oneportDirSeed', SEED_LUA],
      ['oneportDirSnapshotHead', SNAPSHOT_HEAD_LUA],
    ] as const) {
      this.cmd.defineCommand(name, { lua, numberOfKeys: 6 });
    }
    this.scripts = this.cmd as unknown as Scripts;
    for (const conn of [this.cmd, this.reader]) {
      // ioredis emits 'error' for every failed reconnect; state changes are logged in updateConnected().
      conn.on('error', (err: Error) => {
        this.lastError = err;
      });
      conn.on('close', () => this.updateConnected());
      conn.on('ready', () => this.updateConnected());
    }
  }

  private async start(): Promise<void> {
    try {
      await Promise.all([this.cmd.connect(), this.reader.connect()]);
    } catch (err) {
      throw new DirectoryUnavailableError(`directory: cannot reach Redis at ${this.opts.target}: ${(err as Error).message}`, { cause: err });
    }
    try {
      await this.resync('start');
    } catch (err) {
      throw redisCallError('directory: loading the snapshot', this.opts.target, err);
    }
    this.readerId = await this.reader.client('ID');
    this.loop = this.run();
    this.checkTimer = setInterval(() => void this.check(), this.opts.checkIntervalMs);
    this.checkTimer.unref();
  }

  // ---- reads: the mirror only (mirrored.ts) --------------------------------------------------

  staleness(): Staleness {
    const now = this.opts.now();
    return { connected: this.isConnected(), lastSyncAt: this.lastSync, ageMs: Math.max(0, now - this.lastSync) };
  }

  /**
   * Redis acknowledged version `v`: seen by this node, or reported by node `from` (its heartbeat:
   * the last report of each node counts, so a node that followed Redis back to an older history
   * stops counting its old version). This node's mirror must be at least that new before it may
   * write it back into an emptied Redis, or it would bring back what those versions deleted.
   */
  noteAcknowledged(v: number, from?: string): void {
    if (!Number.isSafeInteger(v)) return;
    if (from !== undefined) this.peerAcked.set(from, v);
    else if (v > this.acked) this.acked = v;
  }

  /** The highest version this node saw acknowledged (its mirror's included). */
  acknowledged(): number {
    return Math.max(this.acked, this.mirror.version, ...this.peerAcked.values());
  }

  /** Why Redis still lacks the directory this mirror serves, while it does; else undefined. */
  awaitingReseed(): ReseedWait | undefined {
    return this.awaiting;
  }

  /** The Redis server's run_id the mirror last synced from (changes on restart or failover). */
  get redisRunId(): string | undefined {
    return this.runId;
  }

  /**
   * True while a full load is applied to the mirror in place (until its 'resync', or a failed load
   * until the next one ends): the mirror's records are then a mix of two versions.
   * workers/feed.ts pages the mirror to the workers only while this is false.
   */
  get loading(): boolean {
    return this.loadingMirror;
  }

  /** Where the mirror stands: its version, the feed entry it applied last, the key ring's text in Redis. */
  head(): { version: number; lastId: string; keys: string | undefined } {
    return { version: this.mirror.version, lastId: this.mirror.lastId, keys: this.mirror.keysJson };
  }

  /** The mirror's records of one kind as [name, JSON text], live (a record changed meanwhile shows as it is when reached). */
  records(kind: 'user' | 'vm'): IterableIterator<[string, string]> {
    return this.mirror.records(kind);
  }

  // ---- writes: one script each ---------------------------------------------------------------

  async putUser(user: UserRecord): Promise<void> {
    await this.visible(await this.write<number>('put user', (f) => this.scripts.oneportDirPut(...this.keyList(), f, 'user', user.name, JSON.stringify(user), this.opts.changesMaxLen, '')));
  }
  async deleteUser(name: string): Promise<boolean> {
    const v = await this.write<number>('delete user', (f) => this.scripts.oneportDirDel(...this.keyList(), f, 'user', name, this.opts.changesMaxLen));
    if (v === 0) return false;
    await this.visible(v);
    return true;
  }
  async putVm(vm: VmRecord, opts: PutVmOptions = {}): Promise<boolean> {
    const expect = opts.ifEpoch === undefined ? '' : String(opts.ifEpoch);
    const v = await this.write<number>(
      'put VM',
      (f) => this.scripts.oneportDirPut(...this.keyList(), f, 'vm', vm.name, JSON.stringify(vm), this.opts.changesMaxLen, expect),
      opts.unfenced === true,
    );
    if (v === 0) return false;
    await this.visible(v);
    return true;
  }
  async putVms(vms: readonly VmRecord[], ifEpochs: readonly number[]): Promise<boolean[]> {
    if (vms.length !== ifEpochs.length) throw new RangeError('putVms: one expected epoch per VM');
    const out: boolean[] = [];
    let last = 0;
    for (let i = 0; i < vms.length; i += PUT_VMS_MAX) {
      const args = vms.slice(i, i + PUT_VMS_MAX).flatMap((vm, j) => [vm.name, JSON.stringify(vm), String(ifEpochs[i + j])]);
      const [v, ok] = await this.write<[number, number[]]>('put VMs', (f) => this.scripts.oneportDirPutVms(...this.keyList(), f, this.opts.changesMaxLen, args.length / 3, ...args));
      if (v > 0) this.noteAcknowledged((last = v));
      out.push(...ok.map((x) => x === 1));
    }
    // Read-your-writes once, for the last batch: not a mirror round trip per batch.
    if (last > 0) await this.visible(last);
    return out;
  }
  async deleteVm(name: string): Promise<boolean> {
    const v = await this.write<number>('delete VM', (f) => this.scripts.oneportDirDel(...this.keyList(), f, 'vm', name, this.opts.changesMaxLen));
    if (v === 0) return false;
    await this.visible(v);
    return true;
  }

  /** A new current key; the old current stays valid as `previous` (compare-and-set, retried on a race). */
  async rotateKeys(): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const cur = await this.write<string | null>('read keys', () => this.cmd.get(this.k.keys), true);
      const opened = cur === null ? undefined : this.opts.seal ? this.opts.seal.open(cur) : cur;
      if (cur !== null && opened === undefined) throw new Error('directory: the key ring in Redis is sealed with another key than this node\'s');
      const old = opened !== undefined ? (JSON.parse(opened) as KeyRing).current : this.keys().current;
      const next: KeyRing = { current: newSigningKey(old.id + 1), previous: [old] };
      const v = await this.write<number>('rotate keys', (f) => this.scripts.oneportDirKeysCas(...this.keyList(), f, cur ?? '', this.sealRing(JSON.stringify(next)), this.opts.changesMaxLen));
      if (v > 0) return this.visible(v);
    }
    throw new Error('directory: key rotation lost 5 races in a row with other writers');
  }

  private keyList(): [string, string, string, string, string, string] {
    return [this.k.users, this.k.vms, this.k.keys, this.k.version, this.k.changes, this.opts.fence?.key ?? `${this.opts.prefix}leader`];
  }

  /** Run one write with this node's fencing token ('' when unfenced or outside a cluster). */
  private async write<T>(what: string, fn: (fence: string) => Promise<unknown>, unfenced = false): Promise<T> {
    if (this.closing) throw new DirectoryUnavailableError(`directory: ${what}: the directory is closed`);
    if (this.awaiting) throw new DirectoryUnavailableError(`directory: ${what}: Redis lost the directory; not done until the leader writes it back`);
    const fence = unfenced || !this.opts.fence ? '' : this.opts.fence.token();
    try {
      const reply = await fn(fence);
      // A write's reply is its version: acknowledged, whether or not the feed brings it here.
      if (typeof reply === 'number') this.noteAcknowledged(reply);
      return reply as T;
    } catch (err) {
      const e = redisCallError(`directory: ${what}`, this.opts.target, err);
      if (e instanceof NotLeaderError) this.opts.fence?.onFenced?.();
      throw e;
    }
  }

  /** Read-your-writes on the writing node: resolves once the mirror shows `v` (mirrored.ts), at once when closing. */
  private visible(v: number): Promise<void> {
    if (this.closing) return Promise.resolve();
    return this.awaitVersion(v, this.opts.commandTimeoutMs, () =>
      this.opts.log?.warn({ event: 'directory-write-not-visible', version: v, mirror: this.mirror.version }, 'directory write done, mirror not caught up yet'),
    );
  }

  // ---- the mirror: snapshot, then tail ------------------------------------------------------

  /**
   * A consistent view without one long call, loaded into the mirror in place (mirror.ts
   * beginLoad): the head (key ring, version V, the feed's last id L) in one O(1) script, then both
   * hashes page by page (HSCAN, `snapshotPage` fields a call, each page applied as it arrives),
   * then the feed after L, replayed over them by endLoad. HSCAN returns every field present for
   * the whole scan (with its value, unchanged since L), and may return or miss fields written
   * during it; every one of those has an entry after L, and replaying them in order leaves its
   * value as of the last entry read. The result is the directory at that entry's version. A feed
   * trimmed past L, or a reseed, during the scan: start again (a few times, then fail like any
   * other call). Resolves with the mirror still loading: the caller ends or gives up the load.
   */
  private async snapshot(runId: string | undefined): Promise<SnapshotHead> {
    let threads = this.scanThreadOff === undefined;
    const t0 = performance.now();
    for (let attempt = 1; ; attempt++) {
      const head = (await this.paged(() => this.scripts.oneportDirSnapshotHead(...this.keyList()))) as [string | null, string, string, number];
      // A large load: scanned and parsed by a thread of its own (started before the load begins).
      const thread = threads && Number(head[3]) >= this.opts.scanThreadMin ? this.startScanThread() : undefined;
      this.mirror.beginLoad();
      this.opts.loads?.begin();
      try {
        const invalid: string[] = [];
        const onPage = (page: ParsedPage): void => {
          invalid.push(...this.mirror.applyPage(page));
          this.opts.loads?.page(page);
        };
        if (!(await this.scanHashes(thread, runId, onPage))) {
          // The thread failed: this load again, on this thread (what the pages applied stays).
          this.mirror.abortLoad();
          threads = false;
          attempt--;
          continue;
        }
        const version = Number(head[1]);
        const entries = await this.feedAfter(head[2], version);
        const last = entries?.[entries.length - 1];
        if (entries) {
          const loaded = this.mirror.loaded;
          this.opts.log?.debug({ event: 'directory-loaded', ...loaded, thread: thread !== undefined && threads, ms: Math.round(performance.now() - t0) }, 'directory: snapshot loaded');
          return { keys: head[0] ?? undefined, version: last?.version ?? version, lastId: last?.id ?? head[2], entries, invalid, ...loaded };
        }
      } catch (err) {
        this.mirror.abortLoad();
        throw err;
      }
      this.mirror.abortLoad();
      if (attempt >= SNAPSHOT_TRIES) throw new Error(`directory: the change feed moved on faster than a paged snapshot could follow (${SNAPSHOT_TRIES} tries)`);
      this.opts.log?.warn({ event: 'directory-snapshot-retry', attempt }, 'directory: change feed trimmed during a paged snapshot; starting it again');
    }
  }

  /**
   * Both hashes into the load in progress: by `thread` when given (its pages applied as they
   * come), else on this thread. False when the thread failed (the load must start again without
   * it); a Redis error rejects either way.
   */
  private async scanHashes(thread: ScanThread | undefined, runId: string | undefined, onPage: (page: ParsedPage) => void): Promise<boolean> {
    if (!thread) {
      // Both hashes at once: twice the pages in flight, still one page per call. When one scan
      // fails, the other stops before this load is given up: a page of it must never land in
      // the next load (it would be older than that load's head).
      const stop = { now: false };
      const scans = [this.scanHash('user', this.k.users, stop, onPage), this.scanHash('vm', this.k.vms, stop, onPage)];
      try {
        await Promise.all(scans);
      } catch (err) {
        stop.now = true;
        await Promise.allSettled(scans);
        throw err;
      }
      return true;
    }
    this.scanThread = thread;
    try {
      const reached = await thread.ready();
      // The head was read from the server this node's connections are on: the pages must be too.
      if (reached !== runId) throw new ScanThreadFailed(`it reached another Redis server (run_id ${reached}) than this node's (${runId})`, false);
      await thread.scan(
        [
          { kind: 'user', key: this.k.users },
          { kind: 'vm', key: this.k.vms },
        ],
        onPage,
      );
      return true;
    } catch (err) {
      if (!(err instanceof ScanThreadFailed) || this.stopping.signal.aborted) throw err;
      if (err.lasting) this.scanThreadOff = err.message;
      this.opts.log?.warn({ event: 'directory-scan-thread-failed', err: err.message, lasting: err.lasting }, `directory: the snapshot's scan thread failed (${err.message}); loading on the main thread${err.lasting ? ' from now on' : ''}`);
      return false;
    } finally {
      // Terminated before the load goes on (a failed one already is): no page of it can land in
      // the next load, and no thread outlives its load.
      this.scanThread = undefined;
      await thread.close();
    }
  }

  /** A scan thread for the next load, or undefined (and none from now on) when it cannot start. */
  private startScanThread(): ScanThread | undefined {
    const { commandTimeoutMs, connectionName, snapshotPage } = this.opts;
    try {
      return new ScanThread({
        url: typeof this.redis === 'string' ? this.redis : undefined,
        options: connectionOptions(this.redis, { connectTimeout: Math.max(commandTimeoutMs, 1_000), commandTimeout: commandTimeoutMs, connectionName: `${connectionName}:scan` }),
        page: snapshotPage,
        pageRetryMs: PAGE_RETRY_MS,
        commandTimeoutMs,
      });
    } catch (err) {
      this.scanThreadOff = (err as Error).message;
      this.opts.log?.warn({ event: 'directory-scan-thread-failed', err: this.scanThreadOff, lasting: true }, `directory: ${this.scanThreadOff}; loading on the main thread from now on`);
      return undefined;
    }
  }

  /**
   * Every page of one hash, in cursor order, handed to `page` as it arrives (until `stop.now`).
   * The next page is asked for before this one is handed over, so the round trip overlaps the
   * parsing: one call in flight per hash, as before, but the connection never idles meanwhile.
   */
  private async scanHash(kind: 'user' | 'vm', key: string, stop: { readonly now: boolean }, page: (page: ParsedPage) => void): Promise<void> {
    const scan = (at: string): Promise<[string, string[]]> => this.paged(() => this.cmd.hscan(key, at, 'COUNT', this.opts.snapshotPage));
    let pending = scan('0');
    for (;;) {
      const [next, flat] = await pending;
      if (stop.now) return;
      if (next !== '0') pending = scan(next);
      try {
        page(parsePage(kind, flat));
      } catch (err) {
        // The page in flight is nobody's now: do not let its failure go unhandled.
        pending.catch(() => {});
        throw err;
      }
      if (next === '0') return;
    }
  }

  /** One read of a paged snapshot, asked again while it times out on a connection still up (paged.ts). */
  private paged<T>(read: () => Promise<T>): Promise<T> {
    return pagedRead(read, { budgetMs: PAGE_RETRY_MS, up: () => this.cmd.status === 'ready', signal: this.stopping.signal });
  }

  /**
   * The feed's entries after `lastId`, checked to follow `version` one by one (applied by the
   * mirror's endLoad, all at once); undefined if they cannot be (trimmed, reseeded, malformed).
   * At most the feed's length (`changesMaxLen`, ~10k entries).
   */
  private async feedAfter(lastId: string, version: number): Promise<ChangeEntry[] | undefined> {
    const entries: ChangeEntry[] = [];
    let after = lastId;
    for (;;) {
      const from = after;
      const raw = (await this.paged(() => this.cmd.call('XRANGE', this.k.changes, `(${from}`, '+', 'COUNT', this.opts.snapshotPage))) as unknown[];
      for (const r of raw) {
        const e = parseEntry(r);
        if (!e || e.kind === 'seed' || e.version !== version + 1 || (e.kind === 'keys' && e.data === undefined)) return undefined;
        entries.push(e);
        version = e.version;
        after = e.id;
      }
      if (raw.length < this.opts.snapshotPage) return entries;
    }
  }

  /**
   * Load a snapshot into the mirror. Returns false, leaving the mirror as it was, while Redis lost
   * the directory and this node may not (or need not yet) write it back: ask again later.
   */
  private async resync(reason: ResyncReason): Promise<boolean> {
    const info = await this.cmd.info('server');
    const runId = /run_id:(\w+)/.exec(info)?.[1];
    if (reason === 'reconnect' && this.runId !== undefined && runId !== this.runId) reason = 'master-changed';
    if ((reason === 'reconnect' || reason === 'master-changed') && (await this.feedContinues())) {
      // Nothing to load: the tail reads on from the mirror's place (a trim or a gap found there
      // still asks for a full resync). A Redis restart with its data, or a network blip, made every
      // node scan the whole directory at once before (bench/SCALE.md, 50 mirrors).
      this.runId = runId;
      this.pendingRemote = undefined;
      // A load given up earlier left records newer than the mirror's place: the entries read on from it cover each.
      this.loadingMirror = false;
      const version = this.mirror.version;
      this.opts.log?.info({ event: 'directory-caught-up', reason, version }, `directory: ${reason === 'reconnect' ? 'reconnected' : 'new Redis master'}; its change feed still holds this mirror's place (version ${version}), reading on from there`);
      this.emit('resync', { reason, from: version, to: version, changed: 0, reseeded: false, caughtUp: true } satisfies ResyncEvent);
      return true;
    }
    this.loadingMirror = true;
    let snap = await this.snapshot(runId);
    let reseeded = false;
    let loaded: LoadResult;
    let from: number;
    try {
      if (this.lostDirectory(snap)) {
        this.mirror.abortLoad();
        const outcome = await this.reseed();
        if (outcome !== 'reseeded' && outcome !== 'lost-race') {
          // An emptied Redis gave the load no record: the mirror is as it was, whole.
          this.loadingMirror = false;
          this.awaitReseed(outcome, runId);
          return false;
        }
        reseeded = outcome === 'reseeded';
        snap = await this.snapshot(runId);
      }
      // The history is Redis's from here on: a version it went back from (a failover to a replica
      // that missed writes) no longer counts as acknowledged by this node.
      this.acked = snap.version;
      if (snap.keys === undefined && !snap.entries.some((e) => e.kind === 'keys')) {
        // A new (or emptied) Redis: publish a key ring, ours if we have one so tickets and tokens
        // stay valid. Compare-and-set: if another gateway got there first, theirs stands.
        this.mirror.abortLoad();
        const ring = this.mirror.keysJson ?? this.sealRing(JSON.stringify({ current: newSigningKey(1), previous: [] } satisfies KeyRing));
        await this.scripts.oneportDirKeysCas(...this.keyList(), '', '', ring, this.opts.changesMaxLen);
        snap = await this.snapshot(runId);
      }
      from = this.mirror.version;
      loaded = this.mirror.endLoad(snap, snap.entries);
      this.opts.loads?.end({ keys: snap.keys, version: snap.version, lastId: snap.lastId }, snap.entries);
    } catch (err) {
      this.mirror.abortLoad();
      throw err;
    }
    const to = this.mirror.version;
    this.loadingMirror = false;
    this.runId = runId;
    this.pendingRemote = undefined;
    this.markSynced();
    const invalid = [...snap.invalid, ...loaded.invalid];
    if (invalid.length) this.opts.log?.error({ event: 'directory-invalid-records', records: invalid }, 'directory: skipped malformed records in Redis');
    const ev: ResyncEvent = { reason, from, to, changed: loaded.changed, reseeded };
    if (reason !== 'start') this.opts.log?.warn({ event: 'directory-resync', ...ev }, `directory mirror resynced (${reason})`);
    if (this.awaiting) this.opts.log?.info({ event: 'directory-reseed-done', version: to, reseeded }, reseeded ? 'directory written back into Redis from this mirror' : 'directory written back into Redis by the leader');
    this.awaiting = undefined;
    for (const c of loaded.changes) this.emitChange(c);
    this.wakeWaiters();
    this.emit('resync', ev);
    return true;
  }

  /**
   * Does Redis's history contain the mirror's, so that reading the feed on from the mirror's place
   * (the last entry it applied) brings it up to date? Yes when that very entry is still in the
   * feed with the mirror's version, and Redis's version is not behind it. Stream ids are the
   * master's (replicas copy them), so a master that never had that entry (a failover to a replica
   * that missed it, a Redis that lost its data) fails the test, and the mirror is loaded whole.
   */
  private async feedContinues(): Promise<boolean> {
    const { lastId, version } = this.mirror;
    if (version === 0 || lastId === '0' || lastId === '0-0') return false;
    const [at, remote] = await Promise.all([this.cmd.call('XRANGE', this.k.changes, lastId, lastId) as Promise<unknown[]>, this.cmd.get(this.k.version)]);
    const entry = parseEntry(at[0]);
    return entry !== undefined && entry.id === lastId && entry.version === version && Number(remote ?? 0) >= version;
  }

  /**
   * Redis holds no directory (no version, or only the key ring a fresh node published) while this
   * mirror holds one: the data was lost, not never written.
   */
  private lostDirectory(snap: SnapshotHead): boolean {
    if (!this.opts.reseed || this.mirror.version === 0) return false;
    return snap.version === 0 || (snap.version === 1 && this.mirror.version > 1 && snap.users === 0 && snap.vms === 0);
  }

  /** Write this mirror back, if this node may: see the file comment. */
  private async reseed(): Promise<'reseeded' | 'lost-race' | ReseedWait> {
    const verdict = this.opts.fence?.reseed?.() ?? 'go';
    if (verdict !== 'go') return verdict;
    const d = this.mirror.dump();
    const acked = this.acknowledged();
    if (d.version < acked) {
      if (this.awaiting !== 'stale-mirror') {
        this.opts.log?.error(
          { event: 'directory-reseed-refused', mirror: d.version, acknowledged: acked },
          `Redis lost the directory, and this mirror (version ${d.version}) is older than version ${acked} seen acknowledged: not written back (it would undo those changes)`,
        );
      }
      return 'stale-mirror';
    }
    let fence = '';
    if (this.opts.fence) {
      try {
        fence = this.opts.fence.token();
      } catch {
        return 'not-leader';
      }
    }
    const args = [this.opts.changesMaxLen, d.version, d.keys ?? '', d.users.length, ...d.users.flat(), ...d.vms.flat()];
    try {
      return (await this.scripts.oneportDirSeed(...this.keyList(), fence, ...args)) === 1 ? 'reseeded' : 'lost-race';
    } catch (err) {
      const e = redisCallError('directory: reseed', this.opts.target, err);
      if (!(e instanceof NotLeaderError)) throw e;
      this.opts.fence?.onFenced?.();
      return 'not-leader';
    }
  }

  /** Keep serving the mirror, refuse writes, and say so once per reason. */
  private awaitReseed(why: ReseedWait, runId: string | undefined): void {
    if (this.awaiting !== why) {
      this.opts.log?.warn(
        { event: 'directory-awaiting-reseed', why, mirror: this.mirror.version, acknowledged: this.acknowledged() },
        `directory: Redis lost the directory; serving this mirror (version ${this.mirror.version}) until the leader writes it back (${why})`,
      );
    }
    const changed = this.awaiting !== why;
    this.awaiting = why;
    this.runId = runId;
    if (changed) this.emit('awaiting-reseed', why);
    this.linkUp = false;
    this.updateConnected();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopping.signal.aborted) {
      try {
        if (this.reader.status !== 'ready') {
          this.linkUp = false;
          this.updateConnected();
          await this.ready(this.reader);
          if (this.stopping.signal.aborted) break;
          this.readerId = await this.reader.client('ID');
          this.needResync ??= 'reconnect';
        }
        if (this.needResync) {
          if (this.cmd.status !== 'ready') await this.ready(this.cmd);
          if (this.stopping.signal.aborted) break;
          const reason = this.needResync;
          if (!(await this.resync(reason))) {
            // Redis lost the directory: look again soon (the leader may write it back meanwhile).
            await delay(this.opts.reseedPollMs, undefined, { signal: this.stopping.signal }).catch(() => {});
            continue;
          }
          if (this.needResync === reason) this.needResync = undefined;
        }
        await this.tail();
        failures = 0;
      } catch (err) {
        if (this.stopping.signal.aborted) break;
        this.lastError = err as Error;
        if (failures === 0 && this.reader.status === 'ready' && this.cmd.status === 'ready') {
          // Not a lost connection (those are logged as 'directory-disconnected'): say what failed, once.
          this.opts.log?.warn({ event: 'directory-feed-error', err: (err as Error).message }, 'directory feed failed; retrying');
        }
        this.linkUp = false;
        this.updateConnected();
        this.needResync ??= 'reconnect';
        // The reader's own reconnects are paced by retryStrategy (ready() waits for them); this
        // paces failures while both connections look up (a script refused, a zombie socket).
        if (this.reader.status === 'ready' && this.cmd.status === 'ready') {
          await delay(defaultRetryStrategy(++failures), undefined, { signal: this.stopping.signal }).catch(() => {});
        }
      }
    }
  }

  /** One XREAD: apply what it returns, or learn that nothing changed. */
  private async tail(): Promise<void> {
    const { blockMs, readBatch } = this.opts;
    const pending = this.reader.call('XREAD', 'COUNT', readBatch, 'BLOCK', blockMs, 'STREAMS', this.k.changes, this.mirror.lastId);
    // A socket that went silent (a partition: no FIN, no RST) never answers; give it the block
    // time plus a margin, then drop it so the reconnect path (and a resync) takes over.
    const deadline = setTimeout(() => {
      this.opts.log?.warn({ event: 'directory-feed-silent', ms: blockMs + this.opts.commandTimeoutMs }, 'directory feed connection silent; reconnecting');
      this.reader.disconnect(true);
    }, blockMs + this.opts.commandTimeoutMs);
    let reply: unknown;
    try {
      reply = await pending;
    } finally {
      clearTimeout(deadline);
    }
    if (this.stopping.signal.aborted) return;
    const entries = ((reply as Array<[string, unknown[]]> | null)?.[0]?.[1] ?? []) as unknown[];
    for (const raw of entries) {
      const e = parseEntry(raw);
      if (!e) {
        this.needResync = 'invalid-entry';
        break;
      }
      const r = this.mirror.apply(e);
      if ('applied' in r) {
        // Before the changes: a worker fed from this mirror (workers/feed.ts) gets the entry ahead of any answer they cause.
        this.emit('entry', e);
        for (const c of r.applied) this.emitChange(c);
        continue;
      }
      if ('invalid' in r) {
        this.opts.log?.error({ event: 'directory-invalid-entry', detail: r.invalid }, 'directory: malformed change entry');
        this.needResync = 'invalid-entry';
      } else {
        this.needResync = r.gap.kind === 'seed' ? 'seed' : await this.gapReason();
      }
      break;
    }
    if (!this.needResync) this.markSynced();
    this.wakeWaiters();
  }

  /** A gap because the feed was trimmed past our position, or a real version gap? */
  private async gapReason(): Promise<ResyncReason> {
    try {
      const first = (await this.cmd.call('XRANGE', this.k.changes, '-', '+', 'COUNT', 1)) as Array<[string, unknown]>;
      const firstId = first[0]?.[0];
      return firstId !== undefined && compareIds(firstId, this.mirror.lastId) > 0 ? 'trimmed' : 'gap';
    } catch {
      return 'gap';
    }
  }

  /** Resolves when `conn` is ready or the directory closes. */
  private ready(conn: Redis): Promise<void> {
    if (conn.status === 'ready') return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        conn.removeListener('ready', done);
        this.stopping.signal.removeEventListener('abort', done);
        resolve();
      };
      conn.once('ready', done);
      this.stopping.signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Ask the tailing loop for a resync and wake it from XREAD BLOCK. */
  private requestResync(reason: ResyncReason): void {
    this.needResync ??= reason;
    if (this.readerId !== undefined && this.cmd.status === 'ready') {
      this.cmd.client('UNBLOCK', this.readerId).catch(() => {});
    }
  }

  /** The safety net: does Redis hold the version (and master) the mirror thinks it does? */
  private async check(): Promise<void> {
    if (this.checking || this.stopping.signal.aborted) return;
    this.checking = true;
    try {
      const res = await this.cmd.pipeline().get(this.k.version).info('server').exec();
      const [verRes, infoRes] = res ?? [];
      if (!verRes || !infoRes || verRes[0] || infoRes[0]) throw (verRes?.[0] ?? infoRes?.[0] ?? new Error('no reply'));
      const remote = Number(verRes[1] ?? 0);
      this.noteAcknowledged(remote);
      const runId = /run_id:(\w+)/.exec(String(infoRes[1]))?.[1];
      const local = this.mirror.version;
      if (runId !== this.runId) this.requestResync('master-changed');
      else if (remote < local) this.requestResync('version-mismatch');
      else if (remote > local) {
        // The feed may simply be a moment behind: resync only if it still is at the next check.
        if (this.pendingRemote !== undefined && local < this.pendingRemote) this.requestResync('version-mismatch');
        else this.pendingRemote = remote;
      } else {
        this.pendingRemote = undefined;
        if (!this.needResync) this.markSynced();
      }
    } catch (err) {
      this.lastError = err as Error;
      this.updateConnected();
      // A command connection that stopped answering is replaced (a silent partition).
      if ((err as Error).message.includes('timed out') && this.cmd.status === 'ready') this.cmd.disconnect(true);
    } finally {
      this.checking = false;
    }
  }

  private markSynced(): void {
    this.lastSync = this.opts.now();
    this.linkUp = true;
    this.updateConnected();
  }

  private isConnected(): boolean {
    return this.linkUp && this.cmd.status === 'ready' && this.reader.status === 'ready';
  }

  /** Emits 'connection' (true/false) when staleness().connected flips, and logs the change. */
  private updateConnected(): void {
    const now = this.isConnected();
    if (now === this.wasConnected || this.closing) return;
    this.wasConnected = now;
    if (now) this.opts.log?.info({ event: 'directory-connected', redis: this.opts.target }, 'directory: Redis reachable, mirror live');
    else this.opts.log?.warn({ event: 'directory-disconnected', redis: this.opts.target, err: this.lastError?.message }, 'directory: Redis unreachable, serving the mirror');
    this.emit('connection', now);
  }

  private emitChange(c: DirectoryChange): void {
    try {
      this.emit('change', c);
    } catch (err) {
      // A listener's bug must not stop the feed.
      this.opts.log?.error({ event: 'directory-listener-error', err }, 'directory change listener threw');
    }
  }

  /** Stop tailing, close both connections. Idempotent. Reads keep answering from the mirror. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopping.abort();
      await this.scanThread?.close();
      if (this.checkTimer) clearInterval(this.checkTimer);
      this.reader.disconnect();
      await this.cmd.quit().catch(() => this.cmd.disconnect());
      this.cmd.disconnect();
      await this.loop?.catch(() => {});
      this.wakeWaiters(true);
      this.removeAllListeners();
    })();
    return this.closing;
  }
}

/** How fresh a directory is: always fresh when embedded; a mirror's age while Redis is away. */
export function directoryFreshness(dir: Directory): { connected: boolean; ageMs: number } {
  // A RedisDirectory, or a worker's copy of one (workers/fed-directory.ts).
  const mirrored = dir as Directory & { staleness?: () => Staleness };
  if (typeof mirrored.staleness !== 'function') return { connected: true, ageMs: 0 };
  const st = mirrored.staleness();
  return { connected: st.connected, ageMs: st.connected ? 0 : st.ageMs };
}
