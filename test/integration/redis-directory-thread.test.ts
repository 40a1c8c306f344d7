/**
 * A large load's scan thread (gateway/directory/scan-thread.ts, scan-worker.ts) against a real
 * redis-server: it loads exactly what the main thread loads (tricky records: non-ASCII names,
 * escapes, duplicate keys, a large record, malformed ones), for a first load and an in-place
 * resync; a thread that cannot reach Redis leaves the load to the main thread; one that cannot
 * start leaves every load to it; a Redis error in the middle of its scan fails the load as one on
 * the main thread would.
 */
import t, { type Test } from 'tap';
import { Writable } from 'node:stream';
import type { RedisOptions } from 'ioredis';
import { RedisDirectory, DirectoryUnavailableError, type RedisDirectoryOptions, type ResyncEvent } from '../../gateway/directory/redis.js';
import type { DirectoryChange, UserRecord, VmRecord } from '../../gateway/directory/directory.js';
import { createLogger } from '../../gateway/log.js';
import { startRedis, redisClient, nextEvent } from '../helpers/redis.js';

let prefixes = 0;
const newPrefix = (): string => `thread${process.pid}-${++prefixes}:{dir}:`;

/** A RedisDirectory logging at debug level into `events` (its JSON lines, parsed), closed at teardown. */
async function openDir(t: Test, redis: string | RedisOptions, prefix: string, opts: Partial<RedisDirectoryOptions> = {}): Promise<{ dir: RedisDirectory; events: Array<Record<string, unknown>> }> {
  const events: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) events.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger({ level: 'debug', nodeId: 'thread-test', destination, format: 'json' });
  const dir = await RedisDirectory.open({ redis, prefix, log, ...opts });
  t.teardown(() => dir.close());
  return { dir, events };
}

const of = (events: ReadonlyArray<Record<string, unknown>>, name: string): Array<Record<string, unknown>> => events.filter((e) => e.event === name);

function vm(name: string, over: Partial<VmRecord> = {}): VmRecord {
  return { name, node: 'n1', state: 'running', epoch: 0, endpoints: [{ protocol: 'vnc', host: '10.0.0.1', port: 5900, publishedPort: 5900 }], users: ['alice'], groups: [], ...over };
}
function user(name: string, groups: string[] = []): UserRecord {
  return { name, passwordHash: 'scrypt$test', roles: ['user'], groups, sessionsNotBefore: 0 };
}

/** Everything a mirror answers, comparable with t.same: records, indexes, key ring, version. */
function answers(dir: RedisDirectory, nodes: readonly string[], people: readonly UserRecord[]): unknown {
  const names = (xs: readonly { name: string }[]): string[] => xs.map((x) => x.name).sort();
  const byName = (a: { name: string }, b: { name: string }): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  return {
    users: [...dir.listUsers()].sort(byName),
    vms: [...dir.listVms()].sort(byName),
    onNode: nodes.map((n) => names(dir.vmsOnNode(n))),
    unsettled: nodes.map((n) => names(dir.unsettledVms(n))),
    forUser: people.map((u) => names(dir.vmsForUser(u))),
    keys: dir.keys(),
    version: dir.version(),
  };
}

/** 2,000 plain VMs, 200 users, and the tricky ones; returns the malformed records' log names. */
async function fill(redis: ReturnType<typeof redisClient>, prefix: string): Promise<string[]> {
  const flat: string[] = [];
  for (let i = 0; i < 2000; i++) flat.push(`desk${i}`, JSON.stringify(vm(`desk${i}`, { node: `n${i % 7}`, users: [`u${i % 200}`], groups: i % 3 ? [] : [`g${i % 5}`], state: i % 50 === 0 ? 'down' : 'running' })));
  const many = Array.from({ length: 300 }, (_, i) => `many${i}`);
  const tricky: Array<[string, string]> = [
    ['ünïcödé-😀', JSON.stringify(vm('ünïcödé-😀', { node: 'nœud-1', users: ['ålice', '用户'], groups: ['grüppe'], state: 'down' }))],
    ['rec', JSON.stringify(vm('rec', { node: 'n2', state: 'recovering' }))],
    ['escapes', JSON.stringify(vm('escapes', { endpoints: [{ protocol: 'vnc', host: 'a"b\\c\u0000\u2028\ud83d', port: 1, publishedPort: 1 }] }))],
    ['', JSON.stringify(vm('', { node: 'n3' }))],
    ['crowded', JSON.stringify(vm('crowded', { users: many, groups: Array.from({ length: 20 }, (_, i) => `g${i}`) }))],
    // Duplicate keys (the last wins, as in JSON.parse), another key order, white space.
    ['dup', ` { "users" : ["bob"], "groups": [], "node": "n4", "name": "other", "name": "dup", "state": "running", "epoch": 0, "endpoints": [] } `],
    ['large', JSON.stringify(vm('large', { endpoints: Array.from({ length: 2000 }, (_, i) => ({ protocol: 'rdp' as const, host: `10.1.${i >> 8}.${i & 255}`, port: 3389, publishedPort: 3389 })) }))],
    // Malformed: skipped by both paths.
    ['bad-json', '{"name":"bad-json",'],
    ['wrong-name', JSON.stringify(vm('other-name'))],
    ['no-users', JSON.stringify({ ...vm('no-users'), users: undefined })],
    ['users-not-strings', JSON.stringify({ ...vm('users-not-strings'), users: [1] })],
    ['null', 'null'],
    ['array', '[]'],
  ];
  await redis.hset(`${prefix}vms`, ...flat, ...tricky.flat());
  const people = [...Array.from({ length: 200 }, (_, i) => user(`u${i}`, i % 2 ? [`g${i % 5}`] : [])), user('ålice', ['grüppe']), user('用户'), user('bob')];
  await redis.hset(`${prefix}users`, ...people.flatMap((u) => [u.name, JSON.stringify(u)]), 'broken', '{');
  return ['vm "bad-json"', 'vm "wrong-name"', 'vm "no-users"', 'vm "users-not-strings"', 'vm "null"', 'vm "array"', 'user "broken"'].sort();
}

/** A Redis holding a key ring (a directory opened once) and fill()'s records. */
async function filled(t: Test): Promise<{ redis: Awaited<ReturnType<typeof startRedis>>; prefix: string; direct: ReturnType<typeof redisClient> }> {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const direct = redisClient(t, redis.url);
  const first = await openDir(t, redis.url, prefix);
  await fill(direct, prefix);
  await first.dir.close();
  return { redis, prefix, direct };
}

t.test('the scan thread loads exactly what the main thread loads, tricky records included; a resync in place too', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const direct = redisClient(t, redis.url);
  const first = await openDir(t, redis.url, prefix);
  const malformed = await fill(direct, prefix);
  await first.dir.putVm(vm('marker'));
  const nodes = ['n0', 'n1', 'n2', 'n3', 'n4', 'n6', 'nœud-1', 'none'];
  const people = [user('u7'), user('u8', ['g3']), user('ålice', ['grüppe']), user('用户'), user('bob'), user('many42'), user('nobody', ['g0'])];

  // Small pages: many of them, more than the thread may parse ahead of the main thread.
  const threaded = await openDir(t, redis.url, prefix, { scanThreadMin: 0, snapshotPage: 50, checkIntervalMs: 100 });
  const main = await openDir(t, redis.url, prefix, { scanThreadMin: Infinity, snapshotPage: 50, checkIntervalMs: 100 });
  t.same(of(threaded.events, 'directory-loaded').map((e) => e.thread), [true], 'the first one loaded through a thread');
  t.same(of(main.events, 'directory-loaded').map((e) => e.thread), [false]);
  t.same(of(threaded.events, 'directory-scan-thread-failed'), []);
  t.same(answers(threaded.dir, nodes, people), answers(main.dir, nodes, people), 'same records, indexes and version');
  t.equal(threaded.dir.listVms().length, 2000 + 7 + 1);
  t.same(threaded.dir.getVm('dup')?.users, ['bob'], 'duplicate keys: the last one wins');
  t.same(threaded.dir.unsettledVms('nœud-1').map((v) => v.name), ['ünïcödé-😀']);
  const invalid = (events: ReadonlyArray<Record<string, unknown>>): unknown => of(events, 'directory-invalid-records').flatMap((e) => e.records as string[]).sort();
  t.same(invalid(threaded.events), malformed, 'the same malformed records skipped (and logged)');
  t.same(invalid(main.events), malformed);

  // Behind the feed: changed, deleted, added, one turned malformed; then the version, so both
  // mirrors' periodic checks resync in place (the thread's one through a thread again).
  await direct.hset(`${prefix}vms`, 'desk10', JSON.stringify(vm('desk10', { node: 'n55', epoch: 3 })), 'late', JSON.stringify(vm('late', { node: 'n55', users: ['用户'] })), 'desk11', '{"name":');
  await direct.hdel(`${prefix}vms`, 'desk12', 'ünïcödé-😀');
  const changes = new Map<RedisDirectory, string[]>();
  for (const d of [threaded.dir, main.dir]) {
    changes.set(d, []);
    d.on('change', (c: DirectoryChange) => changes.get(d)!.push(`${c.kind}:${'name' in c ? c.name : ''}`));
  }
  const resyncs = [nextEvent<ResyncEvent>(threaded.dir, 'resync'), nextEvent<ResyncEvent>(main.dir, 'resync')];
  await direct.incr(`${prefix}version`);
  const [a, b] = await Promise.all(resyncs);
  t.equal(a!.reason, 'version-mismatch');
  t.same(of(threaded.events, 'directory-loaded').map((e) => e.thread), [true, true], 'the resync loaded through a thread');
  t.equal(a!.changed, 5, 'desk10, late, desk11, desk12, ünïcödé-😀');
  t.equal(b!.changed, a!.changed);
  t.same(changes.get(threaded.dir)!.sort(), changes.get(main.dir)!.sort(), 'the same changes announced');
  const nodes2 = [...nodes, 'n55'];
  t.same(answers(threaded.dir, nodes2, people), answers(main.dir, nodes2, people), 'and the same answers after it');
  t.same(threaded.dir.vmsOnNode('n55').map((v) => v.name).sort(), ['desk10', 'late']);
});

t.test('a scan thread that cannot reach Redis leaves the load to the main thread', async (t) => {
  const { redis, prefix, direct } = await filled(t);
  // This client, the directory's command and feed connections: no room for a third.
  t.teardown(() => direct.config('SET', 'maxclients', '10000'));
  await direct.config('SET', 'maxclients', '3');
  const { dir, events } = await openDir(t, redis.url, prefix, { scanThreadMin: 0, snapshotPage: 100 });
  const failed = of(events, 'directory-scan-thread-failed');
  t.equal(failed.length, 1, 'the failure is logged');
  t.match(failed[0]?.err, /could not reach Redis/, 'with the reason');
  t.equal(failed[0]?.lasting, false, 'and the next load may try a thread again');
  t.same(of(events, 'directory-loaded').map((e) => e.thread), [false], 'loaded on the main thread');
  t.equal(dir.listVms().length, 2000 + 7);
  t.equal(dir.vmsOnNode('n3').length, 286 + 1);
});

t.test('a Redis error in the middle of a threaded scan fails the load with a clear error', async (t) => {
  const { redis, prefix, direct } = await filled(t);
  // 4 fields a page: ~550 pages, long enough to find the thread's connection scanning and cut it.
  const opening = RedisDirectory.open({ redis: redis.url, prefix, scanThreadMin: 0, snapshotPage: 4, connectionName: 'cut-me' });
  opening.then((d) => d.close(), () => {});
  let killed = 0;
  while (killed === 0) {
    const line = String(await direct.client('LIST')).split('\n').find((l) => l.includes(' name=cut-me:scan ') && l.includes(' cmd=hscan '));
    const id = line && /^id=(\d+)/.exec(line)?.[1];
    if (id) killed = Number(await direct.client('KILL', 'ID', id));
  }
  const err = await opening.then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(err, DirectoryUnavailableError, 'a Redis failure, as on the main thread');
  t.match((err as Error).message, /loading the snapshot/, 'saying what failed');
});

t.test('a scan thread that cannot start: loads go on on the main thread, and try no thread again', async (t) => {
  const { redis, prefix, direct } = await filled(t);
  // Options a thread cannot be given (a symbol does not cross threads); ioredis ignores the field.
  const opts: RedisOptions & { tag: symbol } = { host: '127.0.0.1', port: redis.port, tag: Symbol('not cloneable') };
  const { dir, events } = await openDir(t, opts, prefix, { scanThreadMin: 0, checkIntervalMs: 100 });
  const failed = of(events, 'directory-scan-thread-failed');
  t.equal(failed.length, 1, 'logged once');
  t.match(failed[0]?.err, /cannot start a scan thread/);
  t.equal(failed[0]?.lasting, true);
  t.equal(dir.listVms().length, 2000 + 7, 'loaded on the main thread');
  const resync = nextEvent<ResyncEvent>(dir, 'resync');
  await direct.incr(`${prefix}version`);
  t.equal((await resync).reason, 'version-mismatch');
  t.same(of(events, 'directory-loaded').map((e) => e.thread), [false, false], 'the resync did not try a thread');
  t.equal(of(events, 'directory-scan-thread-failed').length, 1);
});

t.test('close() during a threaded resync ends the thread and its connection', async (t) => {
  const { redis, prefix, direct } = await filled(t);
  const { dir, events } = await openDir(t, redis.url, prefix, { scanThreadMin: 0, snapshotPage: 4, checkIntervalMs: 100, connectionName: 'closing' });
  const scanning = async (): Promise<string | undefined> => String(await direct.client('LIST')).split('\n').find((l) => l.includes(' name=closing:scan '));
  while ((await scanning()) !== undefined) {
    // The thread ended with the load; Redis sees its connection go a moment later.
  }
  // A resync (the periodic check sees the version move) through a thread, ~550 pages long.
  await direct.incr(`${prefix}version`);
  while (!(await scanning())?.includes(' cmd=hscan ')) {
    // Until the thread is scanning.
  }
  await dir.close();
  while ((await scanning()) !== undefined) {
    // Until Redis sees its connection go (terminated with the thread).
  }
  t.pass('the scan connection is gone');
  t.same(of(events, 'directory-scan-thread-failed'), [], 'a close is not a thread failure');
});
