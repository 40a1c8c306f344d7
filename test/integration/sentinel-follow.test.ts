/**
 * Following Sentinel's +switch-master (gateway/directory/sentinel-follow.ts): our connections
 * reach the promoted replica as soon as Sentinel announces it, whatever their own retry backoff,
 * whether the old master died (SIGKILL: the connection is already retrying) or went silent
 * (SIGSTOP: the connection still looks ready to it). Real redis-server master, replica, sentinel.
 */
import t, { type Test } from 'tap';
import { Redis } from 'ioredis';
import { createConnection } from '../../gateway/directory/redis.js';
import { startRedis, startSentinel, nextEvent } from '../helpers/redis.js';
import { until } from '../helpers/wait.js';

/** Retries so slow that, without following the switch, a connection would still be waiting when the test gives up. */
const SLOW_RETRY_MS = 60_000;

async function setup(t: Test) {
  const master = await startRedis(t, { args: ['--repl-diskless-sync-delay', '0'] });
  const replica = await startRedis(t, {
    args: ['--replicaof', '127.0.0.1', String(master.port)],
    waitForLines: ['MASTER <-> REPLICA sync: Finished with success'],
  });
  const sentinel = await startSentinel(t, { masterPort: master.port, replicas: 1 });
  const conn = createConnection(sentinel.clientOptions, { connectionName: 'follow-test', retryStrategy: () => SLOW_RETRY_MS, commandTimeout: 60_000 });
  t.teardown(() => conn.disconnect());
  conn.on('error', () => undefined);
  await conn.connect();
  // The test's own view of the switch, straight from the sentinel.
  const watcher = new Redis({ port: sentinel.port, lazyConnect: true });
  watcher.on('error', () => undefined);
  t.teardown(() => watcher.disconnect());
  await watcher.subscribe('+switch-master');
  const switched = nextEvent<string>(watcher, 'message', (ch) => ch === '+switch-master', 30_000);
  return { master, replica, conn, switched };
}

const portOf = async (conn: Redis): Promise<number> => Number((await conn.info('server')).match(/tcp_port:(\d+)/)?.[1]);
/** Where the connection's socket goes, without a command (a stopped master would never answer one). */
const remotePort = (conn: Redis): number | undefined => (conn as unknown as { stream?: { remotePort?: number } }).stream?.remotePort;

t.test('master SIGKILLed: a connection waiting out a long retry reconnects at the switch', async (t) => {
  const { master, replica, conn, switched } = await setup(t);
  t.equal(await portOf(conn), master.port);
  const closed = nextEvent(conn, 'close');
  await master.kill();
  await closed;
  await switched;
  await until(() => conn.status === 'ready', { timeoutMs: 5_000 });
  t.equal(await portOf(conn), replica.port, 'on the promoted replica, long before its own retry');
});

t.test('master SIGSTOPped: a connection that still looks ready is moved at the switch', async (t) => {
  const { master, replica, conn, switched } = await setup(t);
  t.equal(await portOf(conn), master.port);
  process.kill(master.pid!, 'SIGSTOP');
  t.teardown(() => {
    if (master.pid !== undefined) process.kill(master.pid, 'SIGCONT');
  });
  await switched;
  await until(() => conn.status === 'ready' && remotePort(conn) === replica.port, { timeoutMs: 5_000 });
  t.equal(await portOf(conn), replica.port, 'on the promoted replica (and answering) while the old master is still stopped');
});
