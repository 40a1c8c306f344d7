/**
 * The cluster without its Redis: routing goes on from the mirrors (known VMs, known owners, across
 * nodes), /readyz says how stale the mirror is, writes fail with a clear 503, and when Redis comes
 * back (empty) the mirrors are written back, a leader is elected at a higher epoch and writes
 * resume. And behind Sentinel: the master is killed, writes resume on the promoted replica, every
 * mirror resyncs, and the nodes agree on one leader.
 */
import t from 'tap';
import { startRedis, startSentinel, redisClient } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { rawRequest, echoRoundTrip, basic, startBackend } from '../helpers/net.js';



function connectTls(port: number, ca: string, vm: string, user: string, password: string): Promise<Awaited<ReturnType<typeof rawRequest>>> {
  return rawRequest(port, `CONNECT ${vm}:5900 HTTP/1.1\r\nHost: ${vm}:5900\r\nProxy-Authorization: ${basic(user, password)}\r\n\r\n`, { ca });
}

t.test('Redis killed and restarted: routing continues from the mirror, resync after', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const nodes = await Promise.all(['r1', 'r2'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const token = await adminToken(leader);
  const [owner, entry] = [nodes[0]!, nodes[1]!];
  const desk = await startBackend(t);
  let r = await leader.api('PUT', '/api/vms/desk', { token, body: { node: owner.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: desk.port }], users: ['alice'] } });
  t.equal(r.status, 200);
  r = await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  t.equal(r.status, 200);
  await eventually(async () => ((await entry.api('GET', '/api/vms/desk', { token })).status === 200 ? true : undefined), 5_000, 'desk on the entry node');
  const epochBefore = Number((await leader.waitFor((l) => l.event === 'leader-elected')).epoch);

  // A tunnel open before the outage keeps flowing through it.
  const early = await connectTls(entry.port, cluster.ca.cert, 'desk', 'alice', 'alice-password-1');
  t.match(early.head, /^HTTP\/1\.1 200/);

  const marks = nodes.map((n) => n.logs.length);
  await redis.kill();
  await Promise.all(nodes.map((n, i) => n.waitFor((l) => l.event === 'directory-disconnected', 10_000, { after: marks[i] })));

  t.equal((await echoRoundTrip(early.socket, Buffer.from('still here'))).toString(), 'still here', 'an open tunnel is untouched');
  early.socket.destroy();
  const during = await connectTls(entry.port, cluster.ca.cert, 'desk', 'alice', 'alice-password-1');
  t.match(during.head, /^HTTP\/1\.1 200/, 'a new tunnel entering at another node is routed from the mirror');
  t.equal((await echoRoundTrip(during.socket, Buffer.from('from the mirror'))).toString(), 'from the mirror');
  during.socket.destroy();

  const ready = await eventually(async () => {
    const r = await entry.api<{ directory: { stale: boolean; ageSeconds: number } }>('GET', '/readyz');
    return r.body.directory.stale && r.body.directory.ageSeconds > 0 ? r : undefined;
  }, 10_000, 'readyz shows a stale mirror');
  t.equal(ready.status, 200, 'still ready: it routes');
  t.ok(ready.body.directory.ageSeconds > 0, `mirror age reported (${ready.body.directory.ageSeconds} s)`);
  const metrics = await entry.api<string>('GET', '/metrics');
  t.match(metrics.body, /^oneport_directory_mirror_age_seconds [0-9.]+$/m, 'and in /metrics');
  t.match(metrics.body, /^oneport_directory_connected 0$/m);

  const write = await entry.api<{ error: { code: string } }>('PUT', '/api/users/bob', { token, body: { password: 'bob-password-1' } });
  t.equal(write.status, 503, 'a write while Redis is away: 503');
  t.match(write.body.error.code, /ONEPORT_ERR_(DIRECTORY_UNAVAILABLE|NOT_LEADER)/, 'with a clear code');

  const back = nodes.map((n) => n.logs.length);
  await redis.restart();
  const resyncs = await Promise.all(nodes.map((n, i) => n.waitFor((l) => l.event === 'directory-resync', 15_000, { after: back[i] })));
  t.ok(resyncs.length === 2, 'both mirrors resynced');
  const again = await eventually(async () => {
    const r = await entry.api('PUT', '/api/users/bob', { token, body: { password: 'bob-password-1' } });
    return r.status === 200 ? r : undefined;
  }, 15_000, 'writes resume');
  t.equal(again.status, 200, 'writes resume once Redis is back');
  const newLeader = await Promise.race(nodes.map((n, i) => n.waitFor((l) => l.event === 'leader-elected', 10_000, { after: back[i] })));
  t.ok(Number(newLeader.epoch) > epochBefore, `the new leader's epoch ${String(newLeader.epoch)} is above ${epochBefore} although Redis lost its counter`);
  const vm = await owner.api<{ node: string }>('GET', '/api/vms/desk', { token });
  t.equal(vm.body.node, owner.id, 'the directory survived the empty restart (written back from a mirror)');
});

t.test('Sentinel: master killed, writes resume, mirrors resync, one leader', async (t) => {
  const master = await startRedis(t, { args: ['--repl-diskless-sync-delay', '0'] });
  await startRedis(t, { args: ['--replicaof', '127.0.0.1', String(master.port)], waitForLines: ['MASTER <-> REPLICA sync: Finished with success'] });
  const sentinel = await startSentinel(t, { masterPort: master.port, replicas: 1 });
  const cluster = makeCluster(t, master.url, { cluster: { redis: { sentinels: sentinel.clientOptions.sentinels, name: sentinel.clientOptions.name } } });
  const nodes = await Promise.all(['z1', 'z2', 'z3'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const token = await adminToken(leader);
  t.equal(await redisClient(t, master.url).wait(1, 5_000), 1, 'the replica has the writes');

  const marks = nodes.map((n) => n.logs.length);
  await master.kill();
  // The replica had the writes: a mirror reads the feed on from its place (directory-caught-up),
  // or loads whole if a write landed on the old master after the WAIT (directory-resync).
  await Promise.all(
    nodes.map((n, i) => n.waitFor((l) => (l.event === 'directory-resync' || l.event === 'directory-caught-up') && l.reason === 'master-changed', 30_000, { after: marks[i] })),
  );
  t.pass('every mirror follows the new master');
  const follower = nodes.find((n) => n !== leader)!;
  const w = await eventually(async () => {
    const r = await follower.api('PUT', '/api/users/after', { token, body: { password: 'after-password-1' } });
    return r.status === 200 ? r : undefined;
  }, 20_000, 'writes resume');
  t.equal(w.status, 200, 'a write through a follower lands on the new master');
  for (const n of nodes) {
    await eventually(async () => ((await n.api<Array<{ name: string }>>('GET', '/api/users', { token })).body.some((u) => u.name === 'after') ? true : undefined), 5_000, `write visible on ${n.id}`);
  }
  // Views may lag by a poll (a node that just lost its lease knows no leader for a moment); they
  // must converge on one leader. (That two nodes never act as leader at once is the fence's job,
  // tested in lease.test.ts and failover.test.ts: samples taken one node after another cannot show it.)
  const leaders = await eventually(async () => {
    const views = await Promise.all(nodes.map((n) => n.api<{ leader: { node: string; epoch: number } | null }>('GET', '/api/cluster', { token })));
    const set = new Set(views.map((v) => `${v.body.leader?.node}|${v.body.leader?.epoch}`));
    return set.size === 1 && !set.has('undefined|undefined') ? set : undefined;
  }, 10_000, 'one leader on every node');
  t.equal(leaders.size, 1, `all nodes agree on one leader (${[...leaders].join(', ')})`);
  const leading = await eventually(async () => {
    const claims = await Promise.all(nodes.map((n) => n.api<string>('GET', '/metrics').then((m) => /^oneport_cluster_leader 1$/m.test(m.body))));
    return claims.filter(Boolean).length === 1 ? claims : undefined;
  }, 10_000, 'exactly one node leading');
  t.equal(leading.filter(Boolean).length, 1, `exactly one node says it leads (${leading.join(',')})`);
});
