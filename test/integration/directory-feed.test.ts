/**
 * A worker's copy of its primary's directory mirror (workers/feed.ts, workers/fed-directory.ts)
 * against a real redis-server: the primary's RedisDirectory is the only Redis reader, the copy is
 * fed over an in-process channel with the IPC's own message semantics (JSON, in order). The copy
 * loads while writes go on, follows the feed, writes through the primary and reads its own write,
 * loads again after the primary's full resync (a trimmed feed), and reads on after a caught-up
 * one. Waits are on events, never on time.
 */
import t, { type Test } from 'tap';
import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import { RedisDirectory, type ResyncEvent } from '../../gateway/directory/redis.js';
import { toVmRecord, vmSchema, type Directory, type DirectoryChange, type UserRecord, type VmRecord } from '../../gateway/directory/directory.js';
import { DirectoryFeed } from '../../gateway/workers/feed.js';
import { FedDirectory, type FedWriteReply } from '../../gateway/workers/fed-directory.js';
import { DIRECTORY_WRITES } from '../../gateway/workers/remote.js';
import { type Channel, Rpc } from '../../gateway/workers/ipc.js';
import { startRedis, startFaultProxy, nextEvent } from '../helpers/redis.js';

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

/** Two ends of an IPC-like channel: messages cross as JSON, asynchronously, in order. */
function channelPair(): [Channel, Channel] {
  class End extends EventEmitter {
    other!: End;
    connected = true;
    send(msg: unknown, _handle?: unknown, _opts?: unknown, cb?: (err: Error | null) => void): boolean {
      const copy: unknown = JSON.parse(JSON.stringify(msg));
      setImmediate(() => this.other.emit('message', copy));
      cb?.(null);
      return true;
    }
  }
  const a = new End();
  const b = new End();
  a.other = b;
  b.other = a;
  return [a as unknown as Channel, b as unknown as Channel];
}

const log = pino({ level: 'silent' });

/** The primary's side: its mirror, fed to one worker's copy (pages of `page` records), writes answered as primary.ts does. */
async function feedPair(t: Test, primary: RedisDirectory, page: number): Promise<FedDirectory> {
  const [up, down] = channelPair();
  const primaryRpc = new Rpc(up);
  const workerRpc = new Rpc(down);
  const feed = new DirectoryFeed(page);
  feed.attach(primaryRpc);
  primaryRpc.handle('dir', async (a) => {
    const { op, args } = a as { op: (typeof DIRECTORY_WRITES)[number]; args: unknown[] };
    const r = await (primary[op] as (...x: unknown[]) => Promise<unknown>).apply(primary, args);
    return { r: r ?? null, v: primary.version() } satisfies FedWriteReply;
  });
  const opening = FedDirectory.open(workerRpc, undefined, log);
  feed.open(primary);
  const fed = await opening;
  t.teardown(() => fed.close());
  return fed;
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

t.test('a copy loads page by page while writes go on, then follows the feed', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const primary = await RedisDirectory.open({ redis: redis.url, prefix });
  const other = await RedisDirectory.open({ redis: redis.url, prefix });
  t.teardown(() => Promise.all([primary.close(), other.close()]));
  for (let i = 0; i < 40; i++) await other.putVm(vm(`vm${i}`, `n${i % 3}`));
  for (let i = 0; i < 7; i++) await other.putUser(user(`u${i}`));
  await reach(primary, other.version());

  // Writes land while the copy pages through (3 records a page): each shows in the copy at the end.
  const writes = (async () => {
    for (let i = 0; i < 20; i++) {
      await other.putVm(vm(`vm${i}`, 'moved'));
      if (i % 4 === 0) await other.deleteVm(`vm${39 - i}`);
      await other.putVm(vm(`new${i}`));
    }
  })();
  const fed = await feedPair(t, primary, 3);
  await writes;
  await reach(primary, other.version());
  await reach(fed, other.version());
  t.same(contents(fed), contents(primary), 'the copy holds what the primary holds');
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

t.test('a write through the copy is done by the primary and readable in the copy when it resolves', async (t) => {
  const redis = await startRedis(t);
  const prefix = newPrefix();
  const primary = await RedisDirectory.open({ redis: redis.url, prefix });
  t.teardown(() => primary.close());
  const fed = await feedPair(t, primary, 100);
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
  const primary = await RedisDirectory.open({ redis: proxy.url, prefix, blockMs: 10_000, checkIntervalMs: 600_000 });
  t.teardown(() => Promise.all([primary.close(), writer.close()]));
  await writer.putVm(vm('keep'));
  await writer.putVm(vm('gone'));
  await reach(primary, writer.version());
  const fed = await feedPair(t, primary, 50);
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
