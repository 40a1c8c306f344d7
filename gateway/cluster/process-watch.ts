/**
 * Fast detection of a node whose PROCESS died (crash, SIGKILL, OOM kill): its sockets close at
 * once, its Redis connection among them, long before its heartbeat expires (`nodeTimeoutMs`).
 *
 * Each node publishes the client id of its cluster Redis connection in its node record
 * (`redisClient`, refreshed on every reconnect). Every `cluster.processWatchMs` the leader asks
 * Redis which of its followers' connections still exist (`CLIENT LIST ID ...`, O(nodes)), and each
 * follower asks the same about the leader's. A connection gone is only a hint (the node may be
 * reconnecting); the watcher then probes the node's port, and only if that is silent too it
 * treats the node as gone, in one script:
 * - expires the node's heartbeat (every node now sees it `suspect`, as after `nodeTimeoutMs`),
 * - records its own "port silent" verdict (the leader's usual failover rule still needs two
 *   nodes, or every remaining one, to agree: cluster.ts sweep),
 * - removes the leader lease if the gone node holds it (a follower takes it at its next poll;
 *   fencing refuses any write a not-quite-dead leader might still send),
 * - publishes the node's id on `<prefix>gone`, so that every node judges it (probe + verdict) now
 *   rather than at its next heartbeat.
 * A host that goes silent (power loss, SIGSTOP, partition) closes nothing: the heartbeat timeout
 * handles it as before. A node that was only reconnecting heartbeats again and is `up` at once.
 */
import type { Redis } from 'ioredis';
import type { Logger } from '../log.js';
import type { LeaderInfo } from './lease.js';
import type { PeerView } from './membership.js';

/**
 * KEYS: alive:<node>, unreachable:<node>, leader, channel. ARGV: node, observer, now, verdict ttl.
 * Returns 1 if the lease was removed, 0 if not, -1 (and does nothing) when the node's heartbeat is
 * already gone: it left cleanly (membership.ts leave deletes it with the record's `left`), or it
 * expired and the heartbeat timeout is judging it anyway.
 */
const GONE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local removed = 0
local cur = redis.call('GET', KEYS[3])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[3])
  removed = 1
end
redis.call('PUBLISH', KEYS[4], ARGV[1])
return removed
`;

export interface ProcessWatchDeps {
  /** The cluster connection (lease, heartbeats). */
  readonly redis: Redis;
  readonly prefix: string;
  readonly self: string;
  /** How often to look (0: never). */
  readonly everyMs: number;
  /** The port probe's deadline. */
  readonly probeMs: number;
  /** How long a verdict stands (as membership.ts writes them). */
  readonly verdictTtlMs: number;
  readonly view: () => readonly PeerView[];
  readonly leader: () => LeaderInfo | undefined;
  readonly isLeader: () => boolean;
  readonly probe: (address: string, timeoutMs: number) => Promise<boolean>;
  readonly log: Logger;
  /** `node` is gone (found here or announced by another node): judge it now. */
  readonly onGone: (node: string, leaseRemoved: boolean) => void;
}

type Script = (...args: Array<string | number>) => Promise<unknown>;

export class ProcessWatch {
  private timer: NodeJS.Timeout | undefined;
  private sub: Redis | undefined;
  private ownId: number | undefined;
  private readonly handling = new Set<string>();
  private checking = false;
  private stopped = false;
  private unsupported = false;
  private readonly gone: Script;
  private readonly channel: string;

  constructor(private readonly deps: ProcessWatchDeps) {
    this.channel = `${deps.prefix}gone`;
    deps.redis.defineCommand('oneportNodeGone', { lua: GONE_LUA, numberOfKeys: 4 });
    this.gone = (deps.redis as unknown as Record<string, Script>).oneportNodeGone!.bind(deps.redis);
  }

  /** Our cluster connection's client id, for our node record (undefined until known). */
  clientId(): number | undefined {
    return this.ownId;
  }

  async start(): Promise<void> {
    const learnId = (): void => {
      void this.deps.redis.client('ID').then(
        (id) => (this.ownId = Number(id)),
        () => undefined,
      );
    };
    this.deps.redis.on('ready', learnId);
    // Known before the first heartbeat, so that the node is watched from its first record on.
    if (this.deps.redis.status === 'ready') await this.deps.redis.client('ID').then((id) => (this.ownId = Number(id)), () => undefined);
    if (this.deps.everyMs === 0) return;
    const sub = this.deps.redis.duplicate({ connectionName: `oneport-gone:${this.deps.self}` });
    this.sub = sub;
    sub.on('error', () => undefined);
    sub.on('message', (channel: string, node: string) => {
      if (channel === this.channel && node !== this.deps.self && node.length <= 128) this.deps.onGone(node, false);
    });
    // The connection has no offline queue and does not resubscribe by itself (createConnection):
    // subscribe once it is ready, and again after every reconnect.
    sub.on('ready', () => {
      sub.subscribe(this.channel).catch(() => undefined);
    });
    sub.connect().catch(() => undefined);
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.check().finally(() => this.schedule());
    }, this.deps.everyMs);
    this.timer.unref();
  }

  /** The nodes this one watches: the leader all others; a follower the leader. */
  private targets(): PeerView[] {
    const leader = this.deps.leader();
    return this.deps.view().filter(
      (p) =>
        p.info.id !== this.deps.self &&
        p.state === 'up' &&
        p.info.redisClient !== undefined &&
        !this.handling.has(p.info.id) &&
        (this.deps.isLeader() || p.info.id === leader?.node),
    );
  }

  private async check(): Promise<void> {
    if (this.checking || this.unsupported || this.deps.redis.status !== 'ready') return;
    const targets = this.targets();
    if (targets.length === 0) return;
    this.checking = true;
    try {
      const ids = targets.map((p) => String(p.info.redisClient));
      const list = (await this.deps.redis.call('CLIENT', 'LIST', 'ID', ...ids)) as string;
      const present = new Set<number>();
      for (const line of list.split('\n')) {
        const m = /^id=(\d+) /.exec(line);
        if (m) present.add(Number(m[1]));
      }
      for (const p of targets) if (!present.has(p.info.redisClient!)) void this.confirm(p);
    } catch (err) {
      const message = (err as Error).message;
      // An ACL without CLIENT, or a Redis before 6.2: the heartbeat timeout alone detects deaths.
      if (/NOPERM|unknown|syntax|wrong number/i.test(message)) {
        this.unsupported = true;
        this.deps.log.warn({ event: 'process-watch-off', err: message }, 'cannot list Redis clients: node deaths are detected by the heartbeat timeout only');
      }
    } finally {
      this.checking = false;
    }
  }

  private async confirm(p: PeerView): Promise<void> {
    const node = p.info.id;
    this.handling.add(node);
    try {
      if (await this.deps.probe(p.info.address, this.deps.probeMs)) return;
      // Still the same life of the node? A restart in between has a new record: leave it to the next look.
      const now = this.deps.view().find((x) => x.info.id === node);
      if (!now || now.info.redisClient !== p.info.redisClient || now.info.startedAt !== p.info.startedAt) return;
      const k = this.deps.prefix;
      const verdict = Number(await this.gone(`${k}alive:${node}`, `${k}unreachable:${node}`, `${k}leader`, this.channel, node, this.deps.self, Date.now(), this.deps.verdictTtlMs));
      // It left (a drain's last step) between our last look at the members and now: not a death.
      if (verdict === -1) return;
      const removed = verdict === 1;
      this.deps.log.warn({ event: 'node-process-gone', node, address: p.info.address, leaseRemoved: removed }, `node ${node}: its Redis connection closed and its port is silent; judging it now`);
      this.deps.onGone(node, removed);
    } catch {
      // Redis away: the heartbeat timeout will do.
    } finally {
      this.handling.delete(node);
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.sub?.disconnect();
  }
}
