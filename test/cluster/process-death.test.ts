/**
 * A node whose process dies is judged from its closed Redis connection and silent port
 * (gateway/cluster/process-watch.ts), not after its heartbeat expires. The nodes here run with a
 * heartbeat timeout and a leader lease of 10 s: only the process watch can act within the
 * deadlines below. A node that is paused (SIGSTOP: its connections stay open) is left to the
 * heartbeat timeout, as before. Real gateway processes and a real redis-server.
 */
import t from 'tap';
import net from 'node:net';
import { startRedis, redisClient } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, logTime, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { fixedPortConsole } from '../helpers/console.js';
import { freePort } from '../helpers/net.js';

/** Slow on purpose: the heartbeat timeout and the lease would take 10 s. */
const SLOW = { cluster: { nodeTimeoutMs: 10_000, heartbeatMs: 500, leaseMs: 10_000, renewMs: 500 } };
/** Well under SLOW's 10 s, with room for a loaded machine. */
const FAST_MS = 5_000;

const greet = (s: net.Socket): void => {
  s.write('RFB 003.008\n');
  s.pipe(s);
};

t.test('a follower SIGKILLed: failed over long before its heartbeat expires', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, SLOW);
  const nodes = await Promise.all(['p1', 'p2', 'p3'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const [owner, replica] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
  const token = await adminToken(leader);
  const port = await freePort();
  await fixedPortConsole(t, port, greet);
  const r = await leader.api('PUT', '/api/vms/desk', { token, body: { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: [] } });
  t.equal(r.status, 200);
  for (const n of nodes) await eventually(async () => ((await n.api<{ node: string }>('GET', '/api/vms/desk', { token })).body.node === owner.id ? true : undefined), 5_000, 'desk everywhere');
  // Every node has heartbeated its Redis client id (the watch needs it) once the leader's view shows it.
  await eventually(async () => {
    const st = (await leader.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token })).body;
    return st.nodes.filter((n) => n.state === 'up').length === 3 ? true : undefined;
  }, 10_000, 'three nodes up');

  // Every node listens for "judge it now" (the gone channel), so verdicts do not wait for a tick.
  const [, subscribers] = (await redisClient(t, redis.url).pubsub('NUMSUB', 'oneport:{dir}:gone')) as [string, number];
  t.equal(Number(subscribers), 3, 'every node subscribed to the gone channel');

  const mark = leader.logs.length;
  const killedAt = Date.now();
  owner.kill('SIGKILL');
  const gone = await leader.waitFor((l) => l.event === 'node-process-gone' && l.node === owner.id, FAST_MS, { after: mark });
  t.ok(gone, 'the leader saw its connection close and its port go silent');
  const failed = await leader.waitFor((l) => l.event === 'node-failed' && l.node === owner.id, FAST_MS, { after: mark });
  t.ok(Number(failed.confirmedBy) >= 2, `confirmed by ${String(failed.confirmedBy)} nodes, as the usual rule wants`);
  const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'desk', FAST_MS, { after: mark });
  t.equal(moved.to, replica.id, 'desk promoted to its replica');
  t.comment(`owner SIGKILL -> judged gone ${logTime(gone) - killedAt} ms, failed ${logTime(failed) - killedAt} ms, VM promoted ${logTime(moved) - killedAt} ms (heartbeat timeout 10 s)`);
});

t.test('the leader SIGKILLed: a new leader long before its lease expires; a SIGSTOPped node is left to the timeout', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, SLOW);
  const nodes = await Promise.all(['q1', 'q2', 'q3'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const others = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
  const token = await adminToken(leader);
  await eventually(async () => {
    const st = (await leader.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token })).body;
    return st.nodes.filter((n) => n.state === 'up').length === 3 ? true : undefined;
  }, 10_000, 'three nodes up');

  // Paused, not dead: its sockets stay open, so the watch sees nothing.
  const [paused, survivor] = others;
  const pmark = leader.logs.length;
  paused.kill('SIGSTOP');
  t.teardown(() => paused.kill('SIGCONT'));
  // An absence needs a window: six of the watch's 250 ms rounds.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  t.notOk(leader.logs.slice(pmark).some((l) => l.event === 'node-process-gone'), 'a paused node is not judged gone');
  paused.kill('SIGCONT');

  const marks = others.map((n) => n.logs.length);
  const killedAt = Date.now();
  leader.kill('SIGKILL');
  const next = await electedLeader(others, marks, FAST_MS);
  t.ok(next === survivor || next === paused, 'a survivor leads');
  const elected = next.logs.slice(marks[others.indexOf(next)]).find((l) => l.event === 'leader-elected')!;
  t.comment(`leader SIGKILL -> new leader: ${logTime(elected) - killedAt} ms (lease 10 s)`);
});
