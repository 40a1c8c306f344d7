/**
 * RedisDirectory against a real redis-server: mirrors converge, reads never touch Redis, Redis
 * killed / restarted empty / silent, a gap and a trimmed change feed, the periodic safety net.
 * Every wait is on an event ('change', 'resync', 'connection'), never on time.
 */
import t, { type Test } from 'tap';
import { RedisDirectory, DirectoryUnavailableError, type RedisDirectoryOptions, type ResyncEvent } from '../../gateway/directory/redis.js';
import { toVmRecord, vmSchema, type DirectoryChange, type UserRecord, type VmRecord } from '../../gateway/directory/directory.js';
import { startRedis, startFaultProxy, redisClient, nextEvent } from '../helpers/redis.js';
import { randomBytes } from 'node:crypto';
import { KeyRingSeal, sealedForm } from '../../gateway/cluster/seal.js';

function vm(name: string, node = 'n1', port = 5901): VmRecord {
  return toVmRecord(vmSchema.parse({ name, node, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['alice'] }));
}
function user(name: string, groups: string[] = []): UserRecord {
  return { name, passwordHash: 'scrypt$test', roles: ['user'], groups, sessionsNotBefore: 0 };
}

let prefixes = 0;
/** Key prefixes of their own, so directories (and tests) can share a server. */
function newPrefix(): string {
  return `test${process.pid}-${++prefixes}:{dir}:`;
}

/** A RedisDirectory, closed at teardown. */
async function openDir(t: Test, redis: string, prefix: string, opts: Partial<RedisDirectoryOptions> = {}): Promise<RedisDirectory> {
  const dir = await RedisDirectory.open({ redis, prefix, ...opts });
  t.teardown(() => dir.close());
  return dir;
}

/** Resolves once `dir` has applied version `v` (its 'change' and 'resync' events). */
function reach(dir: RedisDirectory, v: number, timeoutMs = 10_000): Promise<void> {
  if (dir.version() >= v) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (dir.version() < v) return;
      done();
      resolve();
    };
    const done = (): void => {
      clearTimeout(timer);
      dir.removeListener('change', check);
      dir.removeListener('resync', check);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`version ${v} not reached within ${timeoutMs} ms (at ${dir.version()})`));
    }, timeoutMs);
    dir.on('change', check);
    dir.on('resync', check);
  });
}

/** What a mirror holds, comparable with t.same. */
function contents(dir: RedisDirectory): unknown {
  const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name);
  return { users: [...dir.listUsers()].sort(byName), vms: [...dir.listVms()].sort(byName), keys: dir.keys(), version: dir.version() };
}

t.test('writes on one instance reach another instance on the same Redis, in order, with equal versions', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const b = await openDir(t, redis.url, prefix);
  t.equal(a.version(), 1, 'the first instance published a key ring (version 1)');
  t.same(b.keys(), a.keys(), 'both use the same signing keys');
  const seen: DirectoryChange[] = [];
  b.on('change', (c: DirectoryChange) => seen.push(c));

  await a.putUser(user('alice', ['lab']));
  t.equal(a.getUser('alice')?.name, 'alice', 'the writer reads its own write when the call resolves');
  await a.putVm(vm('desk1'));
  await a.putVm(vm('desk2', 'n2', 5902));
  await a.putVm({ ...vm('desk1'), node: 'n3', epoch: 1 });
  t.equal(await a.deleteVm('desk2'), true);
  t.equal(await a.deleteVm('nope'), false, 'deleting nothing is no change');
  t.equal(await a.deleteUser('nobody'), false);
  const before = a.keys();
  await a.rotateKeys();
  t.equal(a.keys().current.id, before.current.id + 1);
  t.same(a.keys().previous, [before.current], 'the previous key stays valid');
  t.equal(a.version(), 7);

  await reach(b, a.version());
  t.same(contents(b), contents(a), 'same records, keys and version');
  t.same(
    seen.map((c) => [c.kind, 'name' in c ? c.name : '', c.version]),
    [
      ['user', 'alice', 2],
      ['vm', 'desk1', 3],
      ['vm', 'desk2', 4],
      ['vm', 'desk1', 5],
      ['vm', 'desk2', 6],
      ['keys', '', 7],
    ],
    "one 'change' per write, in version order",
  );
  t.equal(b.getVm('desk1')?.node, 'n3');
  t.ok(Object.isFrozen(b.getVm('desk1')), 'records are immutable');

  // Writes from both sides interleave into one order.
  await Promise.all([a.putUser(user('bob')), b.putUser(user('carol')), a.putVm(vm('desk3')), b.deleteUser('alice')]);
  await reach(a, 11);
  await reach(b, 11);
  t.same(contents(b), contents(a));
  t.same(b.listUsers().map((u) => u.name).sort(), ['bob', 'carol']);

  // Two nodes rotating at once: compare-and-set makes it two rotations, none lost.
  const ring = a.keys();
  await Promise.all([a.rotateKeys(), b.rotateKeys()]);
  await reach(a, 13);
  await reach(b, 13);
  t.equal(a.keys().current.id, ring.current.id + 2);
  t.equal(a.keys().previous[0]?.id, ring.current.id + 1, 'the previous key is the one rotated in just before');
  t.same(b.keys(), a.keys());

  // Another prefix on the same server is another directory.
  const other = await openDir(t, redis.url, newPrefix());
  t.equal(other.listVms().length, 0);
  t.not(other.keys().current.secret, a.keys().current.secret);
  t.equal(a.staleness().connected, true);
  t.ok(a.staleness().ageMs < 10_000);
});

t.test('a paged snapshot taken while another node writes converges to the writer\'s directory', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  for (let i = 0; i < 300; i += 50) await Promise.all(Array.from({ length: 50 }, (_, j) => a.putVm(vm(`desk${i + j}`))));
  await a.putUser(user('alice'));
  // Writes (changes, deletes, adds, a key rotation) race the pages of b's snapshot.
  const writes = (async () => {
    for (let i = 0; i < 60; i++) {
      if (i % 3 === 0) await a.deleteVm(`desk${i}`);
      else if (i % 3 === 1) await a.putVm({ ...vm(`desk${i}`), node: 'n9', epoch: 1 });
      else await a.putVm(vm(`new${i}`));
      if (i === 30) await a.rotateKeys();
      if (i === 40) await a.putVms([100, 101, 102].map((n) => ({ ...vm(`desk${n}`), node: 'n7', epoch: 1 })), [0, 0, 0]);
    }
  })();
  const b = await openDir(t, redis.url, prefix, { snapshotPage: 7 });
  await writes;
  await reach(b, a.version());
  t.same(contents(b), contents(a), 'same records, key ring and version');
  t.equal(b.listVms().length, 300 - 20 + 20);
});

t.test('putVms: a batch of compare-and-set VM writes is one version and one feed entry, applied whole by other mirrors', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const b = await openDir(t, redis.url, prefix);
  for (let i = 0; i < 5; i++) await a.putVm(vm(`desk${i}`));
  await a.putVm({ ...vm('desk4'), epoch: 3 });
  await reach(b, a.version());
  const seen: DirectoryChange[] = [];
  b.on('change', (c: DirectoryChange) => seen.push(c));
  const admin = redisClient(t, redis.url);
  const entries = Number(await admin.xlen(`${prefix}changes`));
  const before = a.version();
  const moved = [0, 1, 2, 3, 4].map((i) => ({ ...vm(`desk${i}`), node: 'n2', state: 'recovering' as const, epoch: 1 }));
  const ok = await a.putVms(moved, [0, 0, 0, 0, 0]);
  t.same(ok, [true, true, true, true, false], 'desk4 holds epoch 3: not written');
  t.equal(a.version(), before + 1, 'one version for the batch');
  t.equal(Number(await admin.xlen(`${prefix}changes`)), entries + 1, 'one feed entry');
  await reach(b, a.version());
  t.same(seen.map((c) => c.kind === 'vm' && c.name).sort(), ['desk0', 'desk1', 'desk2', 'desk3']);
  t.same(b.vmsOnNode('n2').map((v) => v.name).sort(), ['desk0', 'desk1', 'desk2', 'desk3'], 'indexes follow the batch');
  t.same(b.unsettledVms('n2').length, 4);
  t.same(contents(b), contents(a));
  t.same(await a.putVms([{ ...vm('desk4'), epoch: 9 }], [0]), [false], 'nothing written: no version');
  t.equal(a.version(), before + 1);
});

t.test('lookups are served by the mirror: no Redis command per read', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  // Long block and check periods: the only commands left would be the reads' own.
  const a = await openDir(t, redis.url, prefix, { blockMs: 60_000, checkIntervalMs: 600_000 });
  await a.putUser(user('alice'));
  await a.putVm(vm('desk1'));
  const direct = redisClient(t, redis.url);
  const stats = async (): Promise<number> => {
    const info = await direct.info('commandstats');
    // Every command but the ones this probe itself sends (INFO) and the feed's idle XREAD.
    return [...info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)].filter(([, c]) => c !== 'info' && c !== 'xread').reduce((n, m) => n + Number(m[2]), 0);
  };
  const before = await stats();
  for (let i = 0; i < 10_000; i++) {
    if (!a.getVm('desk1') || !a.getUser('alice') || a.getVm('nope') || a.listVms().length !== 1 || !a.keys().current) t.fail('lookup failed');
  }
  t.equal(await stats(), before, '10000 lookups, 0 Redis commands');
});

t.test('Redis killed: reads go on from the mirror, writes fail fast; restarted empty: the mirror is written back', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const b = await openDir(t, redis.url, prefix);
  await a.putUser(user('alice'));
  await a.putVm(vm('desk1'));
  await reach(b, a.version());
  const version = a.version();
  const keys = a.keys();

  const downA = nextEvent(a, 'connection', (up) => up === false);
  const downB = nextEvent(b, 'connection', (up) => up === false);
  await redis.kill();
  await Promise.all([downA, downB]);
  t.equal(a.staleness().connected, false, 'staleness says disconnected');
  t.ok(a.staleness().lastSyncAt > 0 && a.staleness().lastSyncAt <= Date.now());
  // Reads are synchronous calls on the mirror: with Redis gone they still answer.
  t.equal(a.getVm('desk1')?.endpoints[0]?.port, 5901);
  t.equal(b.getUser('alice')?.name, 'alice');
  t.equal(b.listVms().length, 1);
  t.same(b.keys(), keys);
  const started = Date.now();
  const err = await a.putVm(vm('desk2')).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(err, DirectoryUnavailableError, 'a write rejects with DirectoryUnavailableError');
  t.equal((err as DirectoryUnavailableError).code, 'ONEPORT_ERR_DIRECTORY_UNAVAILABLE');
  t.match((err as Error).message, /unreachable/);
  t.ok(Date.now() - started < 1_000, `rejected fast (${Date.now() - started} ms)`);
  t.equal(a.getVm('desk2'), undefined, 'nothing half-applied');

  const oldRunId = a.redisRunId;
  const resyncA = nextEvent<ResyncEvent>(a, 'resync');
  const resyncB = nextEvent<ResyncEvent>(b, 'resync');
  await redis.restart();
  const [ra, rb] = await Promise.all([resyncA, resyncB]);
  t.equal(ra.reason, 'master-changed', 'a restarted Redis is a new master (run_id changed)');
  t.equal(rb.reason, 'master-changed');
  t.not(a.redisRunId, oldRunId);
  t.equal([ra.reseeded, rb.reseeded].filter(Boolean).length, 1, 'exactly one gateway wrote its mirror back');
  await reach(a, version);
  await reach(b, version);
  t.equal(a.version(), version, 'the version carries on from the mirror');
  t.same(contents(b), contents(a));
  t.same(a.keys(), keys, 'signing keys survive, so tickets and sessions stay valid');
  t.equal(b.getVm('desk1')?.name, 'desk1', 'routes survive');
  t.equal(a.staleness().connected, true);

  const seen = nextEvent<DirectoryChange>(b, 'change', (c) => c.kind === 'vm' && c.name === 'desk2');
  await a.putVm(vm('desk2'));
  t.equal((await seen).version, version + 1, 'a write after the restart reaches the other mirror');
  const direct = redisClient(t, redis.url);
  t.equal(Number(await direct.hlen(`${prefix}vms`)), 2, 'Redis holds the directory again');
});

t.test('a mirror older than a version it saw acknowledged is never written back into an emptied Redis', async (t) => {
  const redis = await startRedis(t);
  const proxy = await startFaultProxy(t, redis.port);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const stale = await openDir(t, proxy.url, prefix);
  await a.putUser(user('alice'));
  await a.putUser(user('bob'));
  await reach(stale, a.version());

  // `stale` is cut off while bob is deleted, and hears of the new version the way a node does
  // (another node's heartbeat), without its mirror holding it.
  proxy.hang();
  t.equal(await a.deleteUser('bob'), true);
  stale.noteAcknowledged(a.version());
  t.ok(stale.getUser('bob'), 'the cut-off mirror still holds bob');
  await a.close();

  const refused = nextEvent<string>(stale, 'awaiting-reseed', (why) => why === 'stale-mirror', 20_000);
  await redis.kill();
  await redis.restart();
  proxy.heal();
  await refused;
  const direct = redisClient(t, redis.url);
  t.equal(await direct.exists(`${prefix}version`), 0, 'nothing written back');
  t.equal(await direct.hexists(`${prefix}users`, 'bob'), 0, 'bob is not resurrected');
  t.equal(stale.awaitingReseed(), 'stale-mirror');
  t.ok(stale.getUser('alice'), 'meanwhile the mirror still serves reads');
  const err = await stale.putUser(user('carol')).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(err, DirectoryUnavailableError, 'and writes wait for the directory to be written back');
});

t.test('a sealed key ring: unreadable in Redis, read by every node with the seal key; a ring from before sealing still read', async (t) => {
  const redis = await startRedis(t);
  const direct = redisClient(t, redis.url);
  const key = randomBytes(32);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix, { seal: new KeyRingSeal(key) });
  const b = await openDir(t, redis.url, prefix, { seal: new KeyRingSeal(key) });
  const stored = (await direct.get(`${prefix}keys`)) ?? '';
  t.ok(sealedForm(stored), 'a new cluster\'s ring is sealed in Redis');
  t.notOk(stored.includes(a.keys().current.secret), 'its secret cannot be read there');
  t.same(b.keys(), a.keys(), 'another node with the seal key reads it');
  const seen = nextEvent<DirectoryChange>(b, 'change', (c) => c.kind === 'keys');
  await a.rotateKeys();
  await seen;
  t.same(b.keys(), a.keys(), 'a rotation reaches it, sealed');
  t.ok(sealedForm((await direct.get(`${prefix}keys`)) ?? ''));

  // An existing cluster: its ring was written in clear before sealing.
  const old = newPrefix();
  const legacy = await openDir(t, redis.url, old);
  t.notOk(sealedForm((await direct.get(`${old}keys`)) ?? ''), 'written in clear');
  const upgraded = await openDir(t, redis.url, old, { seal: new KeyRingSeal(key) });
  t.same(upgraded.keys(), legacy.keys(), 'read by a node that seals');
  const previous = upgraded.keys().current;
  await upgraded.rotateKeys();
  t.ok(sealedForm((await direct.get(`${old}keys`)) ?? ''), 'the next rotation seals it');
  t.same(upgraded.keys().previous[0], previous, 'keeping the old key valid');
});

t.test('with reseed off, mirrors follow a Redis that came back empty, and see it re-populated', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix, { reseed: false });
  const b = await openDir(t, redis.url, prefix, { reseed: false });
  await a.putVm(vm('desk1'));
  await reach(b, a.version());
  const keys = a.keys();
  const gone = nextEvent<DirectoryChange>(b, 'change', (c) => c.kind === 'vm' && c.name === 'desk1');
  const resyncA = nextEvent<ResyncEvent>(a, 'resync');
  const resyncB = nextEvent<ResyncEvent>(b, 'resync');
  await redis.kill();
  await redis.restart();
  const [, r] = await Promise.all([resyncA, resyncB]);
  t.equal(r.reason, 'master-changed');
  t.equal(r.reseeded, false);
  await gone;
  t.equal(b.getVm('desk1'), undefined, 'the mirror follows Redis');
  t.same(b.keys(), keys, 'the key ring is published again from the mirror');

  const seen = nextEvent<DirectoryChange>(b, 'change', (c) => c.kind === 'vm' && c.name === 'desk9');
  await a.putVm(vm('desk9'));
  await seen;
  await reach(b, a.version());
  t.same(contents(b), contents(a), 'a writer re-populating Redis is seen by the other mirror');
});

t.test('a gap in the change feed (an entry written behind the scripts) forces a resync', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  await a.putVm(vm('desk1'));
  const direct = redisClient(t, redis.url);
  const v = a.version();
  const resync = nextEvent<ResyncEvent>(a, 'resync');
  await direct.xadd(`${prefix}changes`, '*', 'v', String(v + 2), 'k', 'vm', 'n', 'ghost', 'd', JSON.stringify(vm('ghost')));
  const r = await resync;
  t.equal(r.reason, 'gap');
  t.equal(a.version(), v, 'the version is what Redis says, not what the stray entry claimed');
  t.equal(a.getVm('ghost'), undefined, 'the stray entry was not applied');
  // The feed goes on after the stray entry.
  await a.putVm(vm('desk2'));
  t.equal(a.getVm('desk2')?.name, 'desk2');
  t.equal(a.version(), v + 1);

  // A malformed entry is not guessed at either.
  const again = nextEvent<ResyncEvent>(a, 'resync');
  await direct.xadd(`${prefix}changes`, '*', 'garbage', '1');
  t.equal((await again).reason, 'invalid-entry');
});

t.test('a mirror that reconnects to the same Redis reads the feed on from its place instead of loading everything', async (t) => {
  const redis = await startRedis(t);
  const proxy = await startFaultProxy(t, redis.port);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const b = await openDir(t, proxy.url, prefix);
  for (let i = 0; i < 20; i++) await a.putVm(vm(`desk${i}`));
  await reach(b, a.version());
  const direct = redisClient(t, redis.url);
  const scansBefore = Number(/cmdstat_hscan:calls=(\d+)/.exec(await direct.info('commandstats'))?.[1] ?? 0);

  // Cut off (held, then reset), while the writer goes on.
  proxy.hang();
  await a.deleteVm('desk3');
  await a.putVm({ ...vm('desk4'), node: 'n2' });
  await a.putUser(user('carol'));
  const resync = nextEvent<ResyncEvent>(b, 'resync');
  const gone = nextEvent<DirectoryChange>(b, 'change', (c) => c.kind === 'vm' && c.name === 'desk3');
  proxy.cut();
  proxy.heal();
  const r = await resync;
  t.equal(r.reason, 'reconnect');
  t.equal(r.caughtUp, true, 'the feed still held its place: nothing loaded whole');
  await gone;
  await reach(b, a.version());
  t.same(contents(b), contents(a), 'same state as the writer, from the feed');
  t.equal(b.getVm('desk4')?.node, 'n2');
  t.equal(b.getUser('carol')?.name, 'carol');
  const scansAfter = Number(/cmdstat_hscan:calls=(\d+)/.exec(await direct.info('commandstats'))?.[1] ?? 0);
  t.equal(scansAfter, scansBefore, 'no HSCAN: the directory was not scanned again');
});

t.test('a mirror cut off while the feed is trimmed past its position resyncs to the right state', async (t) => {
  const redis = await startRedis(t);
  const proxy = await startFaultProxy(t, redis.port);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix, { changesMaxLen: 10 });
  // B reaches Redis through the proxy; long block and check periods keep the other paths out.
  const b = await openDir(t, proxy.url, prefix, { blockMs: 10_000, checkIntervalMs: 600_000 });
  await a.putVm(vm('keep'));
  await a.putVm(vm('gone'));
  await reach(b, a.version());

  proxy.hang();
  for (let i = 0; i < 300; i++) await a.putUser(user(`u${i}`));
  await a.deleteVm('gone');
  await a.putVm({ ...vm('keep'), node: 'n2' });
  const direct = redisClient(t, redis.url);
  const len = Number(await direct.xlen(`${prefix}changes`));
  t.ok(len < 300, `the feed was trimmed (${len} entries left)`);

  const resync = nextEvent<ResyncEvent>(b, 'resync');
  proxy.heal();
  const r = await resync;
  t.equal(r.reason, 'trimmed', 'the missing entries were trimmed away');
  await reach(b, a.version());
  t.same(contents(b), contents(a), 'same final state as the writer');
  t.equal(b.getVm('gone'), undefined);
  t.equal(b.getVm('keep')?.node, 'n2');
  t.equal(b.listUsers().length, 300);
});

t.test('the periodic check catches a version bumped behind the feed', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix, { checkIntervalMs: 50 });
  await a.putVm(vm('desk1'));
  const direct = redisClient(t, redis.url);
  // A change the feed never announces: a record and the version, written directly.
  await direct.hset(`${prefix}vms`, 'sneaky', JSON.stringify(vm('sneaky')));
  await direct.incr(`${prefix}version`);
  const r = await nextEvent<ResyncEvent>(a, 'resync');
  t.equal(r.reason, 'version-mismatch');
  t.equal(a.getVm('sneaky')?.name, 'sneaky', 'the resync loaded what the feed missed');
  t.equal(a.version(), Number(await direct.get(`${prefix}version`)));
});

t.test('a silent Redis (partition, no reset): writes time out with a clear error, reads go on, the mirror recovers', async (t) => {
  const redis = await startRedis(t);
  const proxy = await startFaultProxy(t, redis.port);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const b = await openDir(t, proxy.url, prefix, { blockMs: 200, commandTimeoutMs: 300, checkIntervalMs: 100 });
  await a.putVm(vm('desk1'));
  await reach(b, a.version());

  const down = nextEvent(b, 'connection', (up) => up === false);
  proxy.hang();
  const started = Date.now();
  const err = await b.putVm(vm('desk2')).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(err, DirectoryUnavailableError);
  t.ok(Date.now() - started < 2_000, `the write gave up after the command timeout (${Date.now() - started} ms)`);
  await down;
  t.equal(b.getVm('desk1')?.name, 'desk1', 'reads go on');

  await a.putVm(vm('desk3'));
  const up = nextEvent(b, 'connection', (c) => c === true, 15_000);
  proxy.heal();
  await up;
  await reach(b, a.version());
  t.same(contents(b), contents(a), 'converged after the partition healed');
});

t.test('open() rejects with a clear error when Redis cannot be reached', async (t) => {
  const redis = await startRedis(t);
  const port = redis.port;
  await redis.stop();
  const err = await RedisDirectory.open({ redis: `redis://127.0.0.1:${port}` }).then(
    (d) => d.close(),
    (e: unknown) => e,
  );
  t.type(err, DirectoryUnavailableError);
  t.match((err as Error).message, new RegExp(`cannot reach Redis at redis://127\\.0\\.0\\.1:${port}`));
});

t.test('a few thousand records: a paged load with writes racing it, then an in-place resync that announces only what changed', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const a = await openDir(t, redis.url, prefix);
  const direct = redisClient(t, redis.url);
  // Bulk-loaded straight into the hashes (as an operator's migration would), then one entry.
  const flat: string[] = [];
  for (let i = 0; i < 4000; i++) flat.push(`bulk${i}`, JSON.stringify({ ...vm(`bulk${i}`, `n${i % 7}`), users: [`u${i % 300}`] }));
  await direct.hset(`${prefix}vms`, ...flat);
  await direct.hset(`${prefix}users`, ...Array.from({ length: 300 }, (_, i) => [`u${i}`, JSON.stringify(user(`u${i}`))]).flat());
  await a.putVm(vm('marker'));
  t.equal(a.getVm('bulk1'), undefined, 'a bulk load behind the feed is not seen by a live mirror');

  // B loads 4,300 records 50 at a time while A writes (changes, deletes, adds, a batch).
  const writes = (async () => {
    for (let i = 0; i < 90; i++) {
      if (i % 3 === 0) await a.deleteVm(`bulk${i * 40}`);
      else if (i % 3 === 1) await a.putVm({ ...vm(`bulk${i * 40}`, 'n9'), epoch: 1 });
      else await a.putVm(vm(`new${i}`));
      if (i === 45) await a.putVms([1, 2, 3].map((n) => ({ ...vm(`bulk${n}`, 'n8'), epoch: 1 })), [0, 0, 0]);
    }
  })();
  const b = await openDir(t, redis.url, prefix, { snapshotPage: 50, checkIntervalMs: 100 });
  await writes;
  await reach(b, a.version());
  const inRedis = async (): Promise<unknown> => {
    const [users, vms] = await Promise.all([direct.hgetall(`${prefix}users`), direct.hgetall(`${prefix}vms`)]);
    const sorted = (h: Record<string, string>): unknown[] => Object.keys(h).sort().map((k) => JSON.parse(h[k]!));
    return { users: sorted(users), vms: sorted(vms) };
  };
  const mirrored = (): unknown => {
    const sorted = <T extends { name: string }>(xs: readonly T[]): T[] => [...xs].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
    return { users: sorted(b.listUsers()), vms: sorted(b.listVms()) };
  };
  t.same(mirrored(), await inRedis(), 'B holds exactly what Redis holds');
  t.equal(b.listVms().length, 4000 + 1 + 30 - 30);
  t.same(b.vmsOnNode('n8').map((v) => v.name).sort(), ['bulk1', 'bulk2', 'bulk3'], 'indexes built by the load and the replayed feed');
  t.equal(b.vmsForUser(user('u7')).length, 14, 'bulk7, bulk307 ... bulk3907');

  // Behind the feed: 4 changed, 3 deleted, 2 added, 1 malformed (an existing VM) and 1 rewritten
  // identically; then the version, so B's periodic check resyncs.
  const changed = ['bulk10', 'bulk11', 'bulk12', 'bulk13'];
  const deleted = ['bulk20', 'bulk21', 'bulk22'];
  const added = ['late1', 'late2'];
  await direct.hset(`${prefix}vms`, ...changed.flatMap((n) => [n, JSON.stringify({ ...vm(n, 'n55'), epoch: 3 })]));
  await direct.hdel(`${prefix}vms`, ...deleted);
  await direct.hset(`${prefix}vms`, ...added.flatMap((n) => [n, JSON.stringify(vm(n, 'n55'))]), 'bulk30', '{"name":', 'bulk31', await direct.hget(`${prefix}vms`, 'bulk31') as string);
  const seen = new Set<string>();
  b.on('change', (c: DirectoryChange) => seen.add(`${c.kind}:${'name' in c ? c.name : ''}`));
  const resync = nextEvent<ResyncEvent>(b, 'resync');
  await direct.incr(`${prefix}version`);
  const r = await resync;
  t.equal(r.reason, 'version-mismatch');
  t.same([...seen].sort(), [...changed, ...deleted, ...added, 'bulk30'].map((n) => `vm:${n}`).sort(), 'one change per record that differs, none for the 4,000 others');
  t.equal(r.changed, 10);
  t.equal(b.getVm('bulk30'), undefined, 'a malformed record is skipped');
  t.same(b.vmsOnNode('n55').map((v) => v.name).sort(), [...changed, ...added].sort());
  await direct.hdel(`${prefix}vms`, 'bulk30');
  t.same(mirrored(), await inRedis(), 'and B holds what Redis holds again');
});

// Many nodes loading at once (a cold start of the cluster, every node after a Redis restart) can
// keep one Redis busy past the command timeout for a while. A page that times out is asked again,
// with growing pauses, for up to a minute (paged.ts): a node's first load rides out what used to
// end it after three timeouts in a row (here 3 x 300 ms), on the main thread and on a scan thread.
for (const where of ['main thread', 'scan thread'] as const) {
  t.test(`a load rides out a Redis that stops answering for longer than three command timeouts (${where})`, async (t) => {
    const redis = await startRedis(t);
    const proxy = await startFaultProxy(t, redis.port);
    const prefix = newPrefix();
    const a = await openDir(t, redis.url, prefix);
    for (let i = 0; i < 200; i++) await a.putVm(vm(`desk${i}`));

    const HANG_MS = 2_000; // the partition's length: over 3 x 300 ms, under the retry budget
    let hung = false;
    let pages = 0;
    const b = await openDir(t, proxy.url, prefix, {
      commandTimeoutMs: 300,
      snapshotPage: 10,
      scanThreadMin: where === 'scan thread' ? 1 : 1_000_000,
      loads: {
        begin: () => undefined,
        page: () => {
          pages++;
          if (hung) return;
          // The first page arrived: Redis stops answering mid-load, then comes back.
          hung = true;
          proxy.hang();
          setTimeout(() => proxy.heal(), HANG_MS).unref();
        },
        end: () => undefined,
      },
    });
    t.ok(hung, 'Redis stopped answering during the load');
    t.ok(pages > 10, `the load went on page by page (${pages} pages)`);
    t.same(contents(b), contents(a), 'the mirror holds the whole directory');
  });
}
