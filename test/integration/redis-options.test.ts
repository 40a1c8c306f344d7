/**
 * The cluster's Redis options end to end: a gateway whose directory, auth store, lease and
 * heartbeats all reach a real redis-server over TLS only (rediss://, a private CA given as
 * `cluster.redisCa`) with a password; and a wrong password refused at start-up with a clear error.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueServerCert } from '../../certs/ca.js';
import { buildConfig } from '../../gateway/config.js';
import { startGateway } from '../../gateway/server.js';
import { createLogger } from '../../gateway/log.js';
import { startRedis, redisClient, nextEvent } from '../helpers/redis.js';
import { toVmRecord, vmSchema } from '../../gateway/directory/directory.js';
import type { Cluster } from '../../gateway/cluster/cluster.js';

t.test('Redis over TLS with a password: the node runs, leads and writes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-redis-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = createCa();
  const server = issueServerCert(ca, ['127.0.0.1']);
  const files = { ca: join(dir, 'ca.pem'), cert: join(dir, 'redis.pem'), key: join(dir, 'redis-key.pem') };
  writeFileSync(files.ca, ca.cert);
  writeFileSync(files.cert, server.cert);
  writeFileSync(files.key, server.key);
  const redis = await startRedis(t, { tls: files });
  const tlsPort = redis.tlsPort!;
  // The password comes after start-up (the helper's readiness PING is unauthenticated).
  await redisClient(t, redis.url).config('SET', 'requirepass', 's3cret-pass');
  const state = join(dir, 'state');
  const config = buildConfig({
    nodeId: 'tls1',
    listen: '127.0.0.1:0',
    state,
    demo: { enabled: false },
    log: { level: 'silent' },
    cluster: { redis: `rediss://:s3cret-pass@127.0.0.1:${tlsPort}`, redisCa: files.ca },
  });
  const gw = await startGateway(config, { controlSocket: false, logger: createLogger({ level: 'silent', nodeId: 'tls1' }) });
  t.teardown(() => gw.close({ drainMs: 0 }));
  const cluster = gw.ctx.cluster as Cluster;
  if (!cluster.isLeader()) await nextEvent(cluster.lease, 'elected', () => true, 10_000);
  t.ok(cluster.isLeader(), 'the only node leads');
  const ok = await gw.ctx.dir.putVm(toVmRecord(vmSchema.parse({ name: 'desk', node: 'tls1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }] })));
  t.ok(ok, 'a fenced write over TLS lands');
  t.equal(gw.ctx.dir.getVm('desk')?.node, 'tls1');
  t.equal(gw.ctx.directoryState().connected, true, 'the mirror is live');

  const bad = buildConfig({ ...config, state: join(dir, 'state2'), nodeId: 'tls2', cluster: { redis: `rediss://:wrong-pass@127.0.0.1:${tlsPort}`, redisCa: files.ca } });
  await t.rejects(startGateway(bad, { controlSocket: false, logger: createLogger({ level: 'silent', nodeId: 'tls2' }) }), /WRONGPASS|invalid username-password|NOAUTH|Redis/i, 'a wrong password fails the start with a clear error');
});
