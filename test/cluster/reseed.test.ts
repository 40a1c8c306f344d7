/**
 * A Redis that comes back empty: only the leader writes its mirror back, fenced with its lease
 * token, after the other nodes had time to report their mirrors; a follower never adopts the empty
 * Redis meanwhile (users still log in and reach their desktops through it); and a node whose mirror
 * is older than a version it saw acknowledged never writes it back, so a deleted user stays deleted.
 */
import t from 'tap';
import { startRedis, startFaultProxy, redisClient } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { rawRequest, basic, startBackend } from '../helpers/net.js';

const PREFIX = 'oneport:{dir}:';
// Long enough that a follower's requests while the leader gathers are not a race with the reseed.
const SETTINGS = { cluster: { nodeTimeoutMs: 4000, heartbeatMs: 500 } };

function reseeded(n: ClusterNode, after: number): boolean {
  return n.logs.slice(after).some((l) => l.event === 'directory-reseed-done' && l.reseeded === true);
}

t.test('Redis restarted empty: the leader writes its mirror back, fenced; a follower keeps serving its mirror meanwhile', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, SETTINGS);
  const nodes = await Promise.all(['e1', 'e2'].map((id) => cluster.start(id)));
  const first = await electedLeader(nodes);
  const token = await adminToken(first);
  const desk = await startBackend(t);
  t.equal((await first.api('PUT', '/api/vms/desk', { token, body: { node: 'e1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: desk.port }], users: ['alice'] } })).status, 200);
  t.equal((await first.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } })).status, 200);
  for (const n of nodes) await eventually(async () => ((await n.api('GET', '/api/vms/desk', { token })).status === 200 ? true : undefined), 5_000, `desk on ${n.id}`);

  const marks = nodes.map((n) => n.logs.length);
  await redis.kill();
  await redis.restart();
  // The lease went with the data: whoever is elected now leads the reseed.
  const leader = await electedLeader(nodes, marks);
  const follower = nodes.find((n) => n !== leader)!;
  await follower.waitFor((l) => l.event === 'directory-awaiting-reseed', 15_000, { after: marks[nodes.indexOf(follower)] });

  // While Redis is empty, the follower still knows alice and the desk (from its mirror).
  const login = await follower.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
  const tunnel = await rawRequest(follower.port, `CONNECT desk:5900 HTTP/1.1\r\nHost: desk:5900\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: cluster.ca.cert });
  tunnel.socket.destroy();
  const write = await follower.api('PUT', '/api/users/late', { token, body: { password: 'late-password-1' } });
  const fm = marks[nodes.indexOf(follower)]!;
  t.notOk(follower.logs.slice(fm).some((l) => l.event === 'directory-reseed-done'), 'the follower was still waiting for the reseed during these requests');
  t.equal(login.status, 200, 'a user logs in on the follower while Redis is empty');
  t.match(tunnel.head, /^HTTP\/1\.1 200/, 'and reaches the desktop through it');
  t.equal(write.status, 503, 'changes wait for the directory to be written back');

  const done = await Promise.all(nodes.map((n, i) => n.waitFor((l) => l.event === 'directory-reseed-done', 20_000, { after: marks[i] })));
  const writers = nodes.filter((_, i) => done[i]!.reseeded === true);
  t.same(writers.map((n) => n.id), [leader.id], 'only the leader wrote its mirror back');
  t.notOk(reseeded(follower, fm), 'the follower never did');
  const direct = redisClient(t, redis.url);
  const elected = await leader.waitFor((l) => l.event === 'leader-elected', 10_000, { after: marks[nodes.indexOf(leader)] });
  const seed = ((await direct.xrange(`${PREFIX}changes`, '-', '+')) as Array<[string, string[]]>).find(([, f]) => f[f.indexOf('k') + 1] === 'seed');
  t.ok(seed, 'the change feed records the reseed');
  const fields = seed![1];
  t.equal(fields[fields.indexOf('w') + 1], `${leader.id}|${String(elected.epoch)}`, 'written with the leader\'s fencing token');
  t.equal(await direct.hexists(`${PREFIX}users`, 'alice'), 1, 'alice is back in Redis');
  const vm = await follower.api<{ node: string }>('GET', '/api/vms/desk', { token });
  t.equal(vm.body.node, 'e1', 'the follower serves the written-back directory');
  const again = await eventually(async () => {
    const r = await follower.api('PUT', '/api/users/late', { token, body: { password: 'late-password-1' } });
    return r.status === 200 ? r : undefined;
  }, 15_000, 'writes resume');
  t.equal(again.status, 200, 'writes resume');
});

t.test('a node whose mirror is older than the acknowledged version does not write it back: a deleted user stays deleted', async (t) => {
  const redis = await startRedis(t);
  const proxy = await startFaultProxy(t, redis.port);
  const cluster = makeCluster(t, redis.url, SETTINGS);
  const fresh = await cluster.start('f1');
  await electedLeader([fresh]);
  // The stale node reaches Redis through a proxy that can cut it off.
  const stale = await cluster.start('f2', { cluster: { redis: proxy.url } });
  const token = await adminToken(fresh);
  for (const name of ['alice', 'bob']) t.equal((await fresh.api('PUT', `/api/users/${name}`, { token, body: { password: `${name}-password-1` } })).status, 200);
  await eventually(async () => ((await stale.api<Array<{ name: string }>>('GET', '/api/users', { token })).body.some((u) => u.name === 'bob') ? true : undefined), 5_000, 'bob on f2');

  // f2 is cut off while bob is deleted: its mirror keeps bob.
  proxy.hang();
  const del = await eventually(async () => {
    const r = await fresh.api('DELETE', '/api/users/bob', { token });
    return r.status === 200 ? r : undefined;
  }, 10_000, 'bob deleted');
  t.equal(del.status, 200);

  // Redis loses everything while f1 is paused, so f2, back first, is elected.
  const marks = [fresh.logs.length, stale.logs.length];
  fresh.kill('SIGSTOP');
  t.teardown(() => fresh.kill('SIGCONT'));
  await redis.kill();
  await redis.restart();
  proxy.heal();
  await stale.waitFor((l) => l.event === 'leader-elected', 20_000, { after: marks[1] });
  fresh.kill('SIGCONT');

  // f1 wakes, reports its newer mirror in its heartbeat, and leads the reseed.
  await fresh.waitFor((l) => l.event === 'directory-reseed-done' && l.reseeded === true, 30_000, { after: marks[0] });
  t.notOk(reseeded(stale, marks[1]!), 'the stale node never wrote its mirror back');
  const direct = redisClient(t, redis.url);
  t.equal(await direct.hexists(`${PREFIX}users`, 'bob'), 0, 'bob is not resurrected');
  t.equal(await direct.hexists(`${PREFIX}users`, 'alice'), 1, 'alice is back');
  await eventually(async () => ((await stale.api<Array<{ name: string }>>('GET', '/api/users', { token })).body.some((u) => u.name === 'bob') ? undefined : true), 10_000, 'f2 follows');
  const login = await stale.api('POST', '/api/login', { body: { user: 'bob', password: 'bob-password-1' } });
  t.not(login.status, 200, 'bob cannot log in anywhere');
});
