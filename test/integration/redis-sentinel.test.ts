/**
 * RedisDirectory behind Redis Sentinel: the master is killed, Sentinel promotes the replica, the
 * mirrors notice the new master (run_id), resync, and writes resume. Real redis-server processes
 * (master, replica, sentinel) on free loopback ports.
 */
import t from 'tap';
import { RedisDirectory, type ResyncEvent } from '../../gateway/directory/redis.js';
import { toVmRecord, vmSchema, type DirectoryChange, type VmRecord } from '../../gateway/directory/directory.js';
import { startRedis, startSentinel, redisClient, nextEvent } from '../helpers/redis.js';
import { startTestGateway } from '../helpers/gateway.js';
import { closedPort } from '../helpers/net.js';

function vm(name: string, node = 'n1'): VmRecord {
  return toVmRecord(vmSchema.parse({ name, node, endpoints: [{ protocol: 'spice', host: '127.0.0.1', port: 5930 }] }));
}

t.test('Sentinel failover: mirrors resync from the promoted replica and writes resume', async (t) => {
  // No diskless-sync delay (5 s by default): the replica syncs at once.
  const master = await startRedis(t, { args: ['--repl-diskless-sync-delay', '0'] });
  const replica = await startRedis(t, {
    args: ['--replicaof', '127.0.0.1', String(master.port)],
    waitForLines: ['MASTER <-> REPLICA sync: Finished with success'],
  });
  const sentinel = await startSentinel(t, { masterPort: master.port, replicas: 1 });
  const opts = { redis: sentinel.clientOptions, checkIntervalMs: 200 };
  const a = await RedisDirectory.open(opts);
  t.teardown(() => a.close());
  const b = await RedisDirectory.open(opts);
  t.teardown(() => b.close());

  await a.putVm(vm('desk1'));
  await a.putVm(vm('desk2', 'n2'));
  // Wait (Redis's WAIT, an acknowledgement, not a timer) until the replica has every write.
  t.equal(await redisClient(t, master.url).wait(1, 5_000), 1, 'the replica acknowledged the writes');
  const version = a.version();

  const resyncA = nextEvent<ResyncEvent>(a, 'resync', (e) => e.reason === 'master-changed', 20_000);
  const resyncB = nextEvent<ResyncEvent>(b, 'resync', (e) => e.reason === 'master-changed', 20_000);
  await master.kill();
  t.equal(a.getVm('desk2')?.node, 'n2', 'reads go on during the failover');
  const [ra, rb] = await Promise.all([resyncA, resyncB]);
  t.equal(ra.reseeded || rb.reseeded, false, 'the replica had the directory: nothing to write back');
  t.ok(ra.caughtUp && rb.caughtUp, 'and every entry of the feed: the mirrors read on from their place, nothing loaded whole');
  t.equal(a.version(), version);
  t.equal(b.getVm('desk1')?.name, 'desk1');
  t.equal((await redisClient(t, replica.url).info('replication')).match(/role:(\w+)/)?.[1], 'master', 'Sentinel promoted the replica');

  const seen = nextEvent<DirectoryChange>(b, 'change', (c) => c.kind === 'vm' && c.name === 'desk3');
  await a.putVm(vm('desk3'));
  t.equal((await seen).version, version + 1, 'writes resume on the new master and reach the other mirror');
  t.equal(a.staleness().connected, true);
});

// ioredis retries Sentinel forever: without a deadline `serve` hung at start and logged nothing.
t.test('serve with sentinels that do not answer, or an unknown master group: a clear error within seconds', async (t) => {
  const port = await closedPort();
  const started = Date.now();
  const unreachable = await startTestGateway(t, { cluster: { redis: { sentinels: [{ host: '127.0.0.1', port }], name: 'oneport' } } }).then(
    async (gw) => {
      await gw.close();
      return undefined;
    },
    (e: unknown) => e as Error,
  );
  t.ok(unreachable, 'serve gave up');
  t.match(unreachable?.message, `cannot reach Redis through Sentinel (sentinels 127.0.0.1:${port}, master group "oneport")`);
  t.ok(Date.now() - started < 15_000, `within ${Date.now() - started} ms`);

  const master = await startRedis(t);
  const sentinel = await startSentinel(t, { masterPort: master.port, replicas: 0 });
  const wrongName = await startTestGateway(t, { cluster: { redis: { sentinels: sentinel.clientOptions.sentinels, name: 'nosuch' } } }).then(
    async (gw) => {
      await gw.close();
      return undefined;
    },
    (e: unknown) => e as Error,
  );
  t.match(wrongName?.message, /master group "nosuch"\): .*No such master with that name/, 'the sentinels\' own answer is in the error');
});
