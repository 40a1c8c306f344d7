/**
 * Session caps counted in a real redis-server (cluster/session-counts.ts): admission is atomic
 * (parallel admissions from several "nodes" never go over a cap), a session counts once however
 * many nodes hold part of it, a release frees its slot, and a node that stops refreshing (a crash)
 * frees its slots when its members expire.
 */
import t from 'tap';
import { startRedis, redisClient } from '../helpers/redis.js';
import { eventually } from '../helpers/wait.js';
import { RedisSessionCounter } from '../../gateway/cluster/session-counts.js';

const PREFIX = 'oneport:{dir}:';

t.test('atomic admission, one count per session, release, expiry', async (t) => {
  const redis = await startRedis(t);
  const node = (id: string, ttlMs = 60_000): RedisSessionCounter => new RedisSessionCounter({ redis: redisClient(t, redis.url), prefix: PREFIX, nodeId: id, refreshMs: 60_000, ttlMs });
  const nodes = [node('n1'), node('n2'), node('n3')];
  const caps = { user: 3, vm: 0 };

  // 30 new sessions for alice at once, from three nodes, on three connections: exactly 3 get in.
  const verdicts = await Promise.all(Array.from({ length: 30 }, (_, i) => nodes[i % 3]!.admit({ id: `s${i}`, user: 'alice', vm: `vm${i}` }, caps)));
  t.equal(verdicts.filter((v) => v === 'ok').length, 3, 'never more than the cap');
  t.ok(verdicts.filter((v) => v !== 'ok').every((v) => v === 'user'), 'the others are refused on the user\'s cap');
  const inside = verdicts.flatMap((v, i) => (v === 'ok' ? [i] : []));

  // Another node holding part of an admitted session (a SPICE channel through another node): admitted.
  const i0 = inside[0]!;
  const other = nodes[(i0 + 1) % 3]!;
  t.equal(await other.admit({ id: `s${i0}`, user: 'alice', vm: `vm${i0}` }, caps), 'ok', 'part of a counted session on another node: admitted');
  t.equal(await nodes[0]!.admit({ id: 'new', user: 'alice', vm: 'x' }, caps), 'user', 'and it did not take a slot');

  // The session counts until every node holding it let go.
  nodes[i0 % 3]!.release({ id: `s${i0}`, user: 'alice', vm: `vm${i0}` });
  t.equal(await nodes[0]!.admit({ id: 'new', user: 'alice', vm: 'x' }, caps), 'user', 'one holder left: still counted');
  other.release({ id: `s${i0}`, user: 'alice', vm: `vm${i0}` });
  t.equal(await nodes[0]!.admit({ id: 'new', user: 'alice', vm: 'x' }, caps), 'ok', 'all let go: the slot is free');

  // The VM's cap, and no caps at all: nothing is written.
  t.equal(await nodes[1]!.admit({ id: 'v1', user: 'bob', vm: 'small' }, { user: 0, vm: 1 }), 'ok');
  t.equal(await nodes[2]!.admit({ id: 'v2', user: 'carol', vm: 'small' }, { user: 0, vm: 1 }), 'vm', 'the VM\'s cap');
  const direct = redisClient(t, redis.url);
  t.equal(await nodes[0]!.admit({ id: 'free', user: 'dave', vm: 'big' }, { user: 0, vm: 0 }), 'ok');
  t.equal(await direct.exists(`${PREFIX}caps:user:dave`, `${PREFIX}caps:vm:big`), 0, 'without caps, no keys');

  // A node that stops refreshing (crashed): its sessions stop counting after the TTL; one that
  // refreshes every period (its heartbeat) keeps its sessions counted.
  const crashing = node('n4', 300);
  const alive = new RedisSessionCounter({ redis: redisClient(t, redis.url), prefix: PREFIX, nodeId: 'n5', refreshMs: 50, ttlMs: 300 });
  const held = [{ session: { id: 'c3', user: 'frank', vm: 'v' }, caps: { user: 1, vm: 0 } }];
  t.equal(await alive.admit(held[0]!.session, held[0]!.caps), 'ok');
  alive.start(() => held);
  t.teardown(() => alive.stop());
  const crashedAt = Date.now();
  t.equal(await crashing.admit({ id: 'c1', user: 'erin', vm: 'v' }, { user: 1, vm: 0 }), 'ok');
  t.equal(await nodes[0]!.admit({ id: 'c2', user: 'erin', vm: 'v' }, { user: 1, vm: 0 }), 'user', 'erin is at her cap');
  await eventually(async () => ((await nodes[0]!.admit({ id: 'c2', user: 'erin', vm: 'v' }, { user: 1, vm: 0 })) === 'ok' ? true : undefined), 5000, 'the crashed node\'s slot');
  t.ok(Date.now() - crashedAt >= 250, 'the crashed node\'s session expired after its TTL: its slot is free');
  t.equal(await crashing.admit({ id: 'c4', user: 'frank', vm: 'v' }, { user: 1, vm: 0 }), 'user', 'a refreshed session still counts');
});
