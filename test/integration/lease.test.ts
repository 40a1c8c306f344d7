/**
 * The leader lease and the fence, in-process against a real redis-server: a write carrying a stale
 * fencing token is refused inside Redis; the epoch never goes back, even when Redis lost it; a
 * leader that loses Redis for less than its lease keeps leading; a follower that loses Redis
 * changes nothing; a leader cut off for longer steps down on its own clock before its lease
 * can be taken by another node.
 */
import t from 'tap';
import { performance } from 'node:perf_hooks';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { LeaderLease, type LeaderInfo } from '../../gateway/cluster/lease.js';
import { RedisDirectory, NotLeaderError } from '../../gateway/directory/redis.js';
import { toVmRecord, vmSchema } from '../../gateway/directory/directory.js';
import { startRedis, startFaultProxy, nextEvent } from '../helpers/redis.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

function conn(t: Teardown, url: string): Redis {
  const r = new Redis(url, { protocol: 2, maxRetriesPerRequest: 0, enableOfflineQueue: false, commandTimeout: 300, retryStrategy: () => 50, disconnectTimeout: 100 });
  r.on('error', () => {});
  t.teardown(() => r.disconnect());
  return r;
}

function lease(t: Teardown, redis: Redis, nodeId: string, initialEpoch = 0): LeaderLease {
  const l = new LeaderLease({ redis, key: 'p:leader', epochKey: 'p:epoch', nodeId, leaseMs: 900, renewMs: 150, pollMs: 50, initialEpoch });
  t.teardown(() => l.stop());
  return l;
}

const desk = toVmRecord(vmSchema.parse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }] }));

t.test('a write with a stale fencing token is refused in Redis', async (t) => {
  const redis = await startRedis(t);
  const a = lease(t, conn(t, redis.url), 'a');
  const elected = nextEvent<LeaderInfo>(a, 'elected');
  a.start();
  const info = await elected;
  const dir = await RedisDirectory.open({ redis: redis.url, prefix: 'p:', fence: { key: 'p:leader', token: () => a.fenceToken(), onFenced: () => a.fenced() } });
  t.teardown(() => dir.close());
  await dir.putVm(desk);
  t.equal(dir.getVm('desk')?.node, 'n1', 'the leader writes');

  // Another node takes over (the old lease deleted, as if it expired while "a" was paused).
  const admin = conn(t, redis.url);
  await once(admin, 'ready');
  const stepped = nextEvent<{ reason: string }>(a, 'stepped-down');
  await admin.set('p:leader', `b|${info.epoch + 1}`, 'PX', 5000);
  // A directory that still holds a's old token: what a paused leader would send on waking.
  const stale = await RedisDirectory.open({ redis: redis.url, prefix: 'p:', fence: { key: 'p:leader', token: () => `a|${info.epoch}` } });
  t.teardown(() => stale.close());
  await t.rejects(stale.putVm({ ...desk, node: 'n9' }), NotLeaderError, 'refused by the fence');
  await t.rejects(stale.putUser({ name: 'u', passwordHash: 'x', roles: ['user'], groups: [], sessionsNotBefore: 0 }), NotLeaderError);
  t.equal(await admin.hget('p:vms', 'desk').then((j) => (JSON.parse(j!) as { node: string }).node), 'n1', 'nothing written');
  await t.rejects(dir.putVm({ ...desk, node: 'n8' }), NotLeaderError, 'the real ex-leader is refused too');
  t.match(await stepped, { reason: /fenced|lost|expired/ }, 'and steps down');
  t.equal(a.isLeader(), false);
});

t.test('the epoch never goes back, even when Redis lost it', async (t) => {
  const redis = await startRedis(t);
  const r = conn(t, redis.url);
  const a = lease(t, r, 'a');
  let elected = nextEvent<LeaderInfo>(a, 'elected');
  a.start();
  const first = await elected;
  await a.stop();
  await redis.restart(); // nothing saved: the epoch counter is gone
  const b = lease(t, conn(t, redis.url), 'b', a.highestEpoch() + 5);
  elected = nextEvent<LeaderInfo>(b, 'elected');
  b.start();
  const second = await elected;
  t.ok(second.epoch > first.epoch + 5, `the new epoch ${second.epoch} is above every epoch this node saw (${first.epoch + 5})`);
});

t.test('a brief loss of Redis does not change the leader; a long one makes it step down first', async (t) => {
  const redis = await startRedis(t);
  const leaderProxy = await startFaultProxy(t, redis.port);
  const followerProxy = await startFaultProxy(t, redis.port);
  const a = lease(t, conn(t, leaderProxy.url), 'a');
  const electedA = nextEvent<LeaderInfo>(a, 'elected');
  a.start();
  const info = await electedA;
  const b = lease(t, conn(t, followerProxy.url), 'b');
  const seen = nextEvent<LeaderInfo | undefined>(b, 'leader', (i) => i?.node === 'a');
  b.start();
  await seen;
  let elections = 0;
  b.on('elected', () => elections++);

  // The follower is cut off for a while: nothing changes.
  followerProxy.hang();
  await nextEvent(b, 'leader', () => false, 1000).catch(() => undefined);
  followerProxy.heal();
  t.equal(a.isLeader(), true, 'the leader still leads after a follower lost Redis');

  // The leader is cut off for less than its lease: it keeps leading, same epoch.
  leaderProxy.hang();
  const heldUntil = performance.now() + 400;
  await nextEvent(a, 'stepped-down', () => true, 400).then(
    () => t.fail('stepped down during a short loss'),
    () => undefined,
  );
  t.ok(performance.now() >= heldUntil - 5);
  leaderProxy.heal();
  t.equal(a.isLeader(), true, 'a brief loss does not cost the lease');
  t.equal(a.leader()?.epoch, info.epoch, 'same epoch');
  t.equal(elections, 0, 'no election');

  // Cut off for good: the leader stops acting before the lease can expire in Redis.
  leaderProxy.hang();
  const down = nextEvent<{ reason: string }>(a, 'stepped-down', () => true, 5000);
  const taken = nextEvent<LeaderInfo>(b, 'elected', () => true, 5000);
  await down;
  const steppedAt = performance.now();
  const next = await taken;
  t.ok(performance.now() >= steppedAt, 'the old leader stopped acting before the new one started');
  t.ok(next.epoch > info.epoch, 'the new leader has a higher epoch');
});
