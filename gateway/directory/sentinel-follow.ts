/**
 * Follow Sentinel's `+switch-master` instead of waiting out the reconnect backoff.
 *
 * When the Redis master dies, every connection of ours is already retrying on its backoff
 * (directory/redis.ts defaultRetryStrategy: up to 500 ms), and each retry asks the sentinels for
 * the master; between Sentinel's switch and the next retry nothing works. A master that goes
 * silent (SIGSTOP, a partition) is worse: a connection that is still "ready" to it notices only
 * when a command times out. Sentinel publishes `+switch-master <name> <old ip> <old port> <new ip>
 * <new port>` the moment it has promoted a replica, so one subscriber per sentinel, shared by every
 * connection of the process to that master group, turns the switch into an immediate reconnect:
 * a connection waiting to retry retries now; one still connected to the old master is dropped
 * and reconnects through the sentinels. Both are what a retry does anyway, only sooner, so the
 * directory mirror sees the same close / reconnect / run_id change as without this.
 */
import { Redis, type RedisOptions, type SentinelAddress } from 'ioredis';

interface Group {
  readonly subscribers: Redis[];
  readonly conns: Set<Redis>;
  /** The last switch acted on (`<new ip> <new port>`): every sentinel publishes each switch. */
  last: string | undefined;
}

const groups = new Map<string, Group>();

/** How long a sentinel subscriber waits between reconnects (it has nothing else to do). */
const SUBSCRIBER_RETRY_MS = 1_000;

/** Register `conn` (made with `opts`) to reconnect at once when Sentinel switches its master. No-op without sentinels. */
export function followSentinelSwitches(conn: Redis, opts: RedisOptions): void {
  const sentinels = opts.sentinels;
  const name = opts.name;
  if (!sentinels || sentinels.length === 0 || !name) return;
  const key = JSON.stringify([name, sentinels.map((s) => [s.host, s.port]), opts.sentinelUsername ?? '', Boolean(opts.sentinelTLS)]);
  let group = groups.get(key);
  if (!group) {
    group = { subscribers: [], conns: new Set(), last: undefined };
    groups.set(key, group);
    const g = group;
    for (const s of sentinels) g.subscribers.push(subscribe(s, opts, (message) => switched(g, name, message)));
  }
  group.conns.add(conn);
  const g = group;
  conn.once('end', () => {
    g.conns.delete(conn);
    if (g.conns.size > 0) return;
    groups.delete(key);
    for (const sub of g.subscribers) sub.disconnect();
  });
}

function subscribe(s: Partial<SentinelAddress>, opts: RedisOptions, onSwitch: (message: string) => void): Redis {
  const sub = new Redis({
    host: s.host ?? '127.0.0.1',
    port: s.port ?? 26379,
    ...(opts.sentinelUsername === undefined ? {} : { username: opts.sentinelUsername }),
    ...(opts.sentinelPassword === undefined ? {} : { password: opts.sentinelPassword }),
    ...(opts.sentinelTLS === undefined ? {} : { tls: opts.sentinelTLS }),
    connectionName: 'oneport-sentinel-follow',
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRetriesPerRequest: null,
    retryStrategy: () => SUBSCRIBER_RETRY_MS,
    // A sentinel that is down is the others' business; this one retries quietly.
    reconnectOnError: () => false,
  });
  sub.on('error', () => undefined);
  sub.on('message', (channel: string, message: string) => {
    if (channel === '+switch-master' && message.length < 300) onSwitch(message);
  });
  sub.subscribe('+switch-master').catch(() => undefined);
  return sub;
}

function switched(group: Group, name: string, message: string): void {
  const [master, oldHost, oldPort, newHost, newPort] = message.split(' ');
  if (master !== name || !newHost || !newPort) return;
  const to = `${newHost} ${newPort}`;
  if (group.last === to) return;
  group.last = to;
  for (const conn of group.conns) nudge(conn, `${oldHost}:${oldPort}`, `${newHost}:${newPort}`);
}

function nudge(conn: Redis, oldMaster: string, newMaster: string): void {
  if (conn.status === 'reconnecting') {
    // Its backoff timer would call connect() too; whichever comes second finds it connecting and stops.
    conn.connect().catch(() => undefined);
    return;
  }
  if (conn.status !== 'ready' && conn.status !== 'connect') return;
  const stream = (conn as unknown as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
  const at = stream?.remoteAddress === undefined ? undefined : `${stream.remoteAddress.replace(/^::ffff:/, '')}:${stream.remotePort}`;
  // Still on the old master (silent, not dead), or we cannot tell: drop it and reconnect through the sentinels.
  if (at === newMaster || (at !== undefined && at !== oldMaster)) return;
  // The close schedules a retry on the connection's own backoff: take it at once instead.
  conn.once('reconnecting', () => {
    if (conn.status === 'reconnecting') conn.connect().catch(() => undefined);
  });
  conn.disconnect(true);
}
