/**
 * A worker's copy of its primary's directory mirror (workers/feed.ts, workers/fed-directory.ts)
 * against a real redis-server: the primary's RedisDirectory is the only Redis reader, the copy is
 * fed over an in-process channel with the IPC's own message semantics (v8 serialization, in order). The copy
 * loads while writes go on, follows the feed, writes through the primary and reads its own write,
 * loads again after the primary's full resync (a trimmed feed), and reads on after a caught-up
 * one. Waits are on events, never on time.
 */
import t, { type Test } from 'tap';
import { EventEmitter } from 'node:events';
import v8 from 'node:v8';
import { pino } from 'pino';
import { RedisDirectory, type RedisDirectoryOptions, type ResyncEvent } from '../../gateway/directory/redis.js';
import { toVmRecord, vmSchema, type Directory, type DirectoryChange, type UserRecord, type VmRecord } from '../../gateway/directory/directory.js';
import { DirectoryFeed, type FeedHead } from '../../gateway/workers/feed.js';
import { FedDirectory, type FedWriteReply } from '../../gateway/workers/fed-directory.js';
import { DIRECTORY_WRITES } from '../../gateway/workers/remote.js';
import { type Channel, Rpc } from '../../gateway/workers/ipc.js';
import { startRedis, startFaultProxy, nextEvent, redisClient } from '../helpers/redis.js';

function vm(name: string, node = 'n1', port = 5901): VmRecord {
  return toVmRecord(vmSchema.parse({ name, node, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['alice'] }));
}
function user(name: string): UserRecord {
  return { name, passwordHash: 'scrypt$test', roles: ['user'], groups: [], sessionsNotBefore: 0 };
}

let prefixes = 0;
function newPrefix(): string {
  return `feed${process.pid}-${++prefixes}:{dir}:`;
}

/** Two ends of an IPC-like channel: messages cross as node:cluster's 'advanced' serialization does (v8), asynchronously, in order. */
function channelPair(): { ends: [Channel, Channel]; crossed: unknown[] } {
  const crossed: unknown[] = [];
  class End extends EventEmitter {
    other!: End;
    connected = true;
    send(msg: unknown, _handle?: unknown, _opts?: unknown, cb?: (err: Error | null) => void): boolean {
      const copy: unknown = v8.deserialize(v8.serialize(msg));
      crossed.push(copy);
      setImmediate(() => this.other.emit('message', copy));
      cb?.(null);
      return true;
    }
  }
  const a = new End();
  const b = new End();
  a.other = b;
  b.other = a;
  return { ends: [a as unknown as Channel, b as unknown as Channel], crossed };
}

/** Pages of each form a copy was sent, read off the channel. */
function pagesSent(crossed: unknown[]): { parsed: number; flat: number } {
  const out = { parsed: 0, flat: 0 };
  const look = (m: { oneportW?: string; list?: unknown[]; v?: { pages?: unknown; flat?: unknown } }): void => {
    if (m.oneportW === 'batch') for (const x of m.list ?? []) look(x as typeof m);
    if (m.oneportW === 'reply' && m.v?.pages) out.parsed++;
    if (m.oneportW === 'reply' && m.v?.flat) out.flat++;
  };
  for (const m of crossed) look(m as Parameters<typeof look>[0]);
  return out;
}

const log = pino({ level: 'silent' });

/** The primary's mirror with its feed: `keep` hands it the primary's loads (as primary.ts does), so copies take their parsed pages. */
async function openPrimary(t: Test, opts: RedisDirectoryOptions, keep: boolean, feed = new DirectoryFeed({ pageSize: 5 })): Promise<{ primary: RedisDirectory; feed: DirectoryFeed }> {
  const primary = await RedisDirectory.open({ ...opts, ...(keep ? { loads: feed } : {}) });
  t.teardown(() => primary.close());
  feed.open(primary);
  return { primary, feed };
}

/** A worker's copy of `primary`'s mirror through `feed`, writes answered as primary.ts does (`primary` may still be opening). */
async function copyOf(t: Test, primary: RedisDirectory | Promise<RedisDirectory>, feed: DirectoryFeed): Promise<{ fed: FedDirectory; crossed: unknown[] }> {
  const { ends, crossed } = channelPair();
  const primaryRpc = new Rpc(ends[0]);
  const workerRpc = new Rpc(ends[1]);
  feed.attach(primaryRpc);
  primaryRpc.handle('dir', async (a) => {
    const { op, args } = a as { op: (typeof DIRECTORY_WRITES)[number]; args: unknown[] };
    const dir = await primary;
    const r = await (dir[op] as (...x: unknown[]) => Promise<unknown>).apply(dir, args);
    return { r: r ?? null, v: dir.version() } satisfies FedWriteReply;
  });
  const fed = await FedDirectory.open(workerRpc, undefined, log);
  t.teardown(() => fed.close());
  return { fed, crossed };
}

function contents(dir: Directory): unknown {
  const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name);
  return { users: [...dir.listUsers()].sort(byName), vms: [...dir.listVms()].sort(byName), keys: dir.keys(), version: dir.version() };
}

/** Resolves once `dir` shows version `v`. */
function reach(dir: Directory, v: number): Promise<unknown> {
  if (dir.version() >= v) return Promise.resolve();
  return Promise.race([nextEvent(dir, 'change', () => dir.version() >= v), nextEvent(dir, 'resync', () => dir.version() >= v)]);
}

for (const keep of [true, false]) {
  const form = keep ? 'the pages of the primary\'s load, parsed' : 'pages read from the primary\'s mirror';
  t.test(`a copy loads (${form}) while writes go on, then follows the feed`, async (t) => {
    const redis = await startRedis(t);
    const prefix = newPrefix();
    const other = await RedisDirectory.open({ redis: redis.url, prefix });
    t.teardown(() => other.close());
    for (let i = 0; i < 40; i++) await other.putVm(vm(`vm${i}`, `n${i % 3}`));
    for (let i = 0; i < 7; i++) await other.putUser(user(`u${i}`));
    // HSCAN pages of about 7 fields; mirror pages of 5 records.
    const { primary, feed } = await openPrimary(t, { redis: redis.url, prefix, snapshotPage: 7 }, keep);

    // Writes land while the copy pages through: each shows in the copy at the end.
    const writes = (async () => {
      for (let i = 0; i < 20; i++) {
        await other.putVm(vm(`vm${i}`, 'moved'));
        if (i % 4 === 0) await other.deleteVm(`vm${39 - i}`);
        await other.putVm(vm(`new${i}`));
      }
    })();
    const { fed, crossed } = await copyOf(t, primary, feed);
    await writes;
    await reach(primary, other.version());
    await reach(fed, other.version());
    t.same(contents(fed), contents(primary), 'the copy holds what the primary holds');
    const sent = pagesSent(crossed);
    if (keep) t.ok(sent.parsed > 2 && sent.flat === 0, `the copy took the load's parsed pages (${sent.parsed})`);
    else t.ok(sent.flat > 2 && sent.parsed === 0, `the copy read the mirror (${sent.flat} pages)`);
    t.equal(fed.kind, 'redis');
    t.equal(fed.vmsOnNode('moved').length, 20, 'its indexes are built (VMs by node)');
    t.equal(fed.vmsForUser(user('alice')).length, fed.listVms().length, 'and by user');

    const seen: DirectoryChange[] = [];
    fed.on('change', (c: DirectoryChange) => seen.push(c));
    await other.putVm(vm('later', 'n9'));
    await reach(fed, other.version());
    t.equal(fed.getVm('later')?.node, 'n9', 'a change on another node reaches the copy through the primary');
    t.same(seen, [{ kind: 'vm', name: 'later', version: other.version() }], 'announced once, at its version');
  });
}

t.test('a write through the copy is done by the primary and readable in the copy when it resolves', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const { primary, feed } = await openPrimary(t, { redis: redis.url, prefix }, true);
  const { fed } = await copyOf(t, primary, feed);
  await fed.putUser(user('bob'));
  t.equal(fed.getUser('bob')?.name, 'bob', 'the writer reads its own write');
  t.equal(await fed.putVm(vm('w1')), true);
  t.equal(fed.getVm('w1')?.name, 'w1');
  t.equal(await fed.putVm({ ...vm('w1'), epoch: 5 }, { ifEpoch: 3 }), false, 'a conditional write that lost says so');
  await fed.putVm(vm('b1'));
  await fed.putVm(vm('b2'));
  const [b1, b2] = [fed.getVm('b1')!, fed.getVm('b2')!];
  t.same(await fed.putVms([{ ...b1, node: 'n7' }, { ...b2, node: 'n7' }], [b1.epoch, b2.epoch + 1]), [true, false], 'a batch (each VM on its expected epoch)');
  t.equal(fed.getVm('b1')?.node, 'n7');
  t.equal(fed.getVm('b2')?.node, 'n1');
  t.equal(await fed.deleteVm('w1'), true);
  t.equal(fed.getVm('w1'), undefined);
  const before = fed.keys().current.id;
  await fed.rotateKeys();
  t.equal(fed.keys().current.id, before + 1, 'a key rotation');
  t.same(contents(fed), contents(primary));
});

t.test('after the primary loads its mirror again (a trimmed feed) the copy loads again; after a caught-up resync it reads on', async (t) => {
  const redis = await startRedis(t);
  const proxy = await startFaultProxy(t, redis.port);
  const prefix = newPrefix();
  const writer = await RedisDirectory.open({ redis: redis.url, prefix, changesMaxLen: 10 });
  // The primary reaches Redis through the proxy; long block and check periods keep the other paths out.
  t.teardown(() => writer.close());
  const { primary, feed } = await openPrimary(t, { redis: proxy.url, prefix, blockMs: 10_000, checkIntervalMs: 600_000 }, true);
  await writer.putVm(vm('keep'));
  await writer.putVm(vm('gone'));
  await reach(primary, writer.version());
  const { fed, crossed } = await copyOf(t, primary, feed);
  t.same(contents(fed), contents(primary));

  proxy.hang();
  for (let i = 0; i < 120; i++) await writer.putUser(user(`u${i}`));
  await writer.deleteVm('gone');
  await writer.putVm(vm('keep', 'n2'));
  const changed = new Set<string>();
  fed.on('change', (c: DirectoryChange) => changed.add(c.kind === 'keys' ? 'keys' : `${c.kind}:${c.name}`));
  const resync = nextEvent<ResyncEvent>(fed, 'resync');
  proxy.heal();
  const r = await resync;
  t.equal(r.reason, 'trimmed', 'the copy loaded again, for the primary\'s reason');
  t.ok(pagesSent(crossed).parsed > 0, 'from the pages of the primary\'s new load');
  await reach(fed, writer.version());
  t.same(contents(fed), contents(primary), 'same state as the primary');
  t.equal(fed.getVm('gone'), undefined, 'a record deleted meanwhile is gone from the copy');
  t.equal(fed.getVm('keep')?.node, 'n2');
  t.ok(changed.has('vm:gone') && changed.has('vm:keep') && changed.has('user:u119'), 'what changed was announced');
  t.notOk(changed.has('keys'), 'what did not change was not');

  // A connection cut with the feed intact: the primary reads on from its place, so does the copy.
  const down = nextEvent<boolean>(fed, 'connection', (c) => c === false);
  const caughtUp = nextEvent<ResyncEvent>(fed, 'resync');
  proxy.cut();
  await down;
  t.equal(fed.staleness().connected, false, 'the copy says the node lost Redis');
  await writer.putVm(vm('after-cut'));
  const ev = await caughtUp;
  t.equal(ev.caughtUp, true, 'the primary read on from its place');
  await reach(fed, writer.version());
  t.equal(fed.getVm('after-cut')?.name, 'after-cut');
  t.same(contents(fed), contents(primary));
});

t.test('copies that start while the primary loads follow that load as it reads it', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const other = await RedisDirectory.open({ redis: redis.url, prefix });
  t.teardown(() => other.close());
  const direct = redisClient(t, redis.url);
  // Enough records in small HSCAN pages that the load takes many round trips.
  const pipe = direct.pipeline();
  for (let i = 0; i < 3000; i++) pipe.hset(`${prefix}vms`, `s${i}`, JSON.stringify(vm(`s${i}`, `n${i % 5}`)));
  await pipe.exec();
  await other.putVm(vm('marker'));
  const feed = new DirectoryFeed({ pageSize: 5 });
  // The worker asks once the primary's load has read its first page.
  const firstPage = new Promise<void>((resolve) => {
    const page = feed.page.bind(feed);
    feed.page = (p) => {
      page(p);
      resolve();
    };
  });
  const opening = RedisDirectory.open({ redis: redis.url, prefix, snapshotPage: 20, loads: feed });
  t.teardown(async () => (await opening).close());
  void opening.then((d) => feed.open(d));
  await firstPage;
  // Two workers starting with the node.
  const [a, b] = await Promise.all([copyOf(t, opening, feed), copyOf(t, opening, feed)]);
  const primary = await opening;
  let sent = 0;
  for (const { crossed } of [a, b]) {
    const heads = crossed.flatMap(function find(m): unknown[] {
      const w = m as { oneportW?: string; m?: string; a?: FeedHead; list?: unknown[] };
      return w.oneportW === 'batch' ? (w.list ?? []).flatMap(find) : w.m === 'dir-head' ? [w.a] : [];
    }) as FeedHead[];
    t.equal(heads[0]?.pending, true, 'its head came before the load ended: pending');
    t.ok(pagesSent(crossed).parsed > 10, 'it took the load\'s pages as they were read');
    sent += pagesSent(crossed).parsed;
  }
  const { serialized, heldBytes } = feed.stats;
  t.ok(serialized < sent, `a chunk taken by both was serialized once (${serialized} serialized, ${sent} sent)`);
  t.equal(heldBytes, 0, 'and none is held once both copies are done');
  await other.putVm(vm('after'));
  await reach(primary, other.version());
  for (const { fed } of [a, b]) {
    await reach(fed, other.version());
    t.same(contents(fed), contents(primary), 'the copy holds what the primary holds');
    t.equal(fed.vmsOnNode('n3').length, 600);
  }
});

t.test('when the kept load is dropped, copies that are done still follow the feed', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const { primary, feed } = await openPrimary(t, { redis: redis.url, prefix }, true, new DirectoryFeed({ pageSize: 5, keepEntries: 3 }));
  const { fed } = await copyOf(t, primary, feed);
  let reloads = 0;
  fed.on('resync', () => reloads++);
  for (let i = 0; i < 6; i++) await primary.putVm(vm(`k${i}`));
  await reach(fed, primary.version());
  t.equal(fed.getVm('k5')?.name, 'k5', 'entries past the kept load\'s bound reach a copy that is done');
  t.equal(reloads, 0, 'and it did not load again');
  const late = await copyOf(t, primary, feed);
  t.same(contents(late.fed), contents(primary), 'a later copy reads the mirror');
  t.ok(pagesSent(late.crossed).flat > 0);
});
