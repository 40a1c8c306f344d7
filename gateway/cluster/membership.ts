/**
 * Membership: every node registers itself and heartbeats; every node keeps a view of all nodes
 * in memory (the data path asks it for an owner's address, never Redis).
 *
 * Keys (same prefix as the directory; see README "Cluster" for the whole schema):
 * | key                      | type   | content                                                  |
 * |--------------------------|--------|----------------------------------------------------------|
 * | `<prefix>nodes`           | hash   | node id -> NodeInfo JSON (address, version, capacity...) |
 * | `<prefix>alive:<node>`    | string | Heartbeat JSON, PX expiry = nodeTimeoutMs                |
 * | `<prefix>unreachable:<n>` | hash   | observer node id -> when it found n's port silent (ms)   |
 *
 * One script per heartbeat writes this node's record and heartbeat and returns the whole view, so
 * a tick is one round trip whatever the cluster size.
 */
import type { Redis } from 'ioredis';

export interface NodeInfo {
  readonly id: string;
  /** host:port of its one port, as the other nodes reach it. */
  readonly address: string;
  readonly version: string;
  readonly capacity: number;
  readonly startedAt: number;
  /** Set by the leader when it failed the node over; cleared by the node's next heartbeat. */
  readonly down?: { readonly at: number; readonly epoch: number } | undefined;
  /** Set by the node itself on a graceful stop: not failed over (move its VMs first). */
  readonly left?: { readonly at: number } | undefined;
  /** It holds the cluster CA key: it signs join requests (cluster/join.ts). */
  readonly signer?: boolean | undefined;
  /** The Redis client id of its cluster connection (process-watch.ts): gone with its process. */
  readonly redisClient?: number | undefined;
}

export interface Heartbeat {
  readonly at: number;
  readonly tunnels: number;
  readonly mirror: { readonly version: number; readonly ageMs: number; readonly connected: boolean };
}

export type NodeState = 'up' | 'suspect' | 'down' | 'left';

export interface PeerView {
  readonly info: NodeInfo;
  readonly heartbeat: Heartbeat | undefined;
  /** Nodes that found this node's port silent lately. */
  readonly unreachableBy: readonly string[];
  readonly state: NodeState;
  /**
   * How long its heartbeat has left before it expires (Redis's PTTL, so no clock is compared),
   * as of the view's refresh; undefined when it has none.
   */
  readonly expiresInMs: number | undefined;
}

/** ARGV: self id, self info JSON, heartbeat JSON, nodeTimeoutMs, prefix. Returns {id, info, heartbeat|'', observers, heartbeat's PTTL}. */
const HEARTBEAT_LUA = `
local prefix = ARGV[5]
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', prefix .. 'alive:' .. ARGV[1], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', prefix .. 'unreachable:' .. ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id = all[i]
  out[#out + 1] = {id, all[i + 1], redis.call('GET', prefix .. 'alive:' .. id) or '', redis.call('HKEYS', prefix .. 'unreachable:' .. id), redis.call('PTTL', prefix .. 'alive:' .. id)}
end
return out
`;

/** ARGV: observer, now, ttl, 1 = silent / 0 = answers. */
const VERDICT_LUA = `
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
`;

type Script = (...args: Array<string | number>) => Promise<unknown>;

export class Membership {
  private view = new Map<string, PeerView>();
  private readonly heartbeatScript: Script;
  private readonly verdictScript: Script;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly nodeTimeoutMs: number,
  ) {
    redis.defineCommand('oneportHeartbeat', { lua: HEARTBEAT_LUA, numberOfKeys: 1 });
    redis.defineCommand('oneportVerdict', { lua: VERDICT_LUA, numberOfKeys: 1 });
    const r = redis as unknown as Record<string, Script>;
    this.heartbeatScript = r.oneportHeartbeat!.bind(redis);
    this.verdictScript = r.oneportVerdict!.bind(redis);
  }

  get nodesKey(): string {
    return `${this.prefix}nodes`;
  }

  /** Write our record and heartbeat; refresh the view. */
  async beat(self: NodeInfo, hb: Heartbeat): Promise<ReadonlyMap<string, PeerView>> {
    const raw = (await this.heartbeatScript(this.nodesKey, self.id, JSON.stringify(self), JSON.stringify(hb), this.nodeTimeoutMs, this.prefix)) as Array<[string, string, string, string[], number]>;
    const next = new Map<string, PeerView>();
    for (const [id, infoJson, hbJson, observers, pttl] of raw) {
      let info: NodeInfo;
      try {
        info = JSON.parse(infoJson) as NodeInfo;
      } catch {
        continue;
      }
      let heartbeat: Heartbeat | undefined;
      try {
        heartbeat = hbJson ? (JSON.parse(hbJson) as Heartbeat) : undefined;
      } catch {
        heartbeat = undefined;
      }
      const state: NodeState = heartbeat ? 'up' : info.down ? 'down' : info.left ? 'left' : 'suspect';
      next.set(id, { info, heartbeat, unreachableBy: observers, state, expiresInMs: heartbeat && pttl >= 0 ? pttl : undefined });
    }
    this.view = next;
    return next;
  }

  /** Record whether `node`'s port answered us. */
  async verdict(observer: string, node: string, silent: boolean): Promise<void> {
    await this.verdictScript(`${this.prefix}unreachable:${node}`, observer, Date.now(), this.nodeTimeoutMs * 4, silent ? '1' : '0');
  }

  /** The leader marks a failed-over node down (its own next heartbeat clears it). */
  async markDown(info: NodeInfo, epoch: number): Promise<void> {
    await this.redis.hset(this.nodesKey, info.id, JSON.stringify({ ...info, down: { at: Date.now(), epoch } } satisfies NodeInfo));
  }

  /**
   * Graceful stop (a restart, an upgrade): the node says it left on purpose, so the leader does
   * not fail its VMs over while their consoles still run; its heartbeat goes at once.
   */
  async leave(self: NodeInfo): Promise<void> {
    await this.redis
      .multi()
      .hset(this.nodesKey, self.id, JSON.stringify({ ...self, left: { at: Date.now() } } satisfies NodeInfo))
      .del(`${this.prefix}alive:${self.id}`)
      .exec();
  }

  get(id: string): PeerView | undefined {
    return this.view.get(id);
  }

  all(): readonly PeerView[] {
    return [...this.view.values()];
  }
}
