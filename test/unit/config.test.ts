import t from 'tap';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { ConfigError, buildConfig, loadConfig, parseListen, parseWorkers, workerCount } from '../../gateway/config.js';
import { ERRORS } from '../../gateway/errors.js';
import { VERSION } from '../../gateway/version.js';

t.test('defaults, with units, frozen', async (t) => {
  const c = buildConfig({});
  t.equal(c.listen, '0.0.0.0:8443');
  t.equal(c.detect.timeoutMs, 10_000);
  t.equal(c.auth.ticketTtlMs, 60_000);
  t.ok(Object.isFrozen(c) && Object.isFrozen(c.http) && Object.isFrozen(c.serverNames));
});

t.test('one clear message per bad field', async (t) => {
  const err = t.throws(() => buildConfig({ listen: 'x', detect: { timeoutMs: -1 }, auth: { ticketTtlMs: 3_600_000 }, typo: true })) as ConfigError;
  t.type(err, ConfigError);
  t.match(err.problems.join('\n'), /listen: must be host:port/);
  t.match(err.problems.join('\n'), /detect\.timeoutMs/);
  t.match(err.problems.join('\n'), /auth\.ticketTtlMs/);
  t.match(err.problems.join('\n'), /typo/);
});

t.test('flags over environment over file', async (t) => {
  const dir = t.testdir({ 'c.json': JSON.stringify({ listen: '127.0.0.1:1000', nodeId: 'fromfile' }) });
  const c = loadConfig({ configFile: `${dir}/c.json`, env: { ONEPORT_LISTEN: '127.0.0.1:2000' }, overrides: { listen: '127.0.0.1:3000' } });
  t.equal(c.listen, '127.0.0.1:3000');
  t.equal(c.nodeId, 'fromfile');
  t.equal(loadConfig({ configFile: `${dir}/c.json`, env: { ONEPORT_LISTEN: '127.0.0.1:2000' } }).listen, '127.0.0.1:2000');
  t.throws(() => loadConfig({ configFile: `${dir}/missing.json`, env: {} }), ConfigError);
});

t.test('workers: one per core by default; a number or auto from the file, ONEPORT_WORKERS or --workers', async (t) => {
  t.equal(buildConfig({}).workers, 'auto');
  t.equal(workerCount(buildConfig({})), availableParallelism());
  const dir = t.testdir({ 'c.json': JSON.stringify({ workers: 3 }) });
  t.equal(loadConfig({ configFile: `${dir}/c.json`, env: {} }).workers, 3);
  t.equal(loadConfig({ configFile: `${dir}/c.json`, env: { ONEPORT_WORKERS: '1' } }).workers, 1);
  t.equal(loadConfig({ configFile: `${dir}/c.json`, env: { ONEPORT_WORKERS: '1' }, overrides: { workers: parseWorkers('auto') } }).workers, 'auto');
  const err = t.throws(() => loadConfig({ env: { ONEPORT_WORKERS: 'lots' } })) as ConfigError;
  t.match(err.problems.join('\n'), /workers/);
  t.throws(() => buildConfig({ workers: 0 }), ConfigError);
});

t.test('proxyProtocol.maxV2HeaderBytes: 4 KiB by default, from an AF_UNIX address block to the largest v2 header', async (t) => {
  t.equal(buildConfig({}).proxyProtocol.maxV2HeaderBytes, 4096);
  t.equal(buildConfig({ proxyProtocol: { maxV2HeaderBytes: 65551 }, detect: { maxBytes: 65551 } }).detect.maxBytes, 65551);
  for (const bad of [231, 65552, 1.5]) {
    const err = t.throws(() => buildConfig({ proxyProtocol: { maxV2HeaderBytes: bad } })) as ConfigError;
    t.match(err.problems.join('\n'), /proxyProtocol\.maxV2HeaderBytes/, `${bad} refused`);
  }
});

t.test('tunnel.resume caps: defaults, and the node budget holds at least one session\'s buffer', async (t) => {
  t.same(
    { ...buildConfig({}).tunnel.resume },
    { graceMs: 30_000, maxBufferBytes: 16 * 1024 * 1024, maxSessionsPerUser: 16, maxParkedPerUser: 8, maxParked: 1024, maxBufferedBytes: 256 * 1024 * 1024 },
  );
  const err = t.throws(() => buildConfig({ tunnel: { resume: { maxBufferBytes: 2 * 1024 * 1024, maxBufferedBytes: 1024 * 1024 } } })) as ConfigError;
  t.match(err.problems.join('\n'), /tunnel\.resume\.maxBufferedBytes: .*at least maxBufferBytes/);
  for (const key of ['maxSessionsPerUser', 'maxParkedPerUser', 'maxParked']) {
    const e = t.throws(() => buildConfig({ tunnel: { resume: { [key]: 0 } } })) as ConfigError;
    t.match(e.problems.join('\n'), new RegExp(`tunnel\\.resume\\.${key}`), `${key}: 0 refused`);
  }
});

t.test('listen addresses', async (t) => {
  t.same(parseListen(':8443'), { host: '0.0.0.0', port: 8443 });
  t.same(parseListen('[::1]:443'), { host: '::1', port: 443 });
  t.equal(parseListen('[zz]:1'), undefined);
  t.equal(parseListen('host:70000'), undefined);
});

t.test('every error code is documented in README', async (t) => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  for (const code of Object.keys(ERRORS)) t.ok(readme.includes(code), `${code} in README`);
});

t.test('version matches package.json', async (t) => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  t.equal(VERSION, pkg.version);
});

t.test('a Redis without a password, or reached without TLS off this host, is named at start', async (t) => {
  const { redisExposure } = await import('../../gateway/server.js');
  t.same(redisExposure('redis://127.0.0.1:6379'), ['has no password (redis://user:password@...)'], 'loopback without TLS is fine, without a password is not');
  t.same(redisExposure('redis://10.0.0.5:6379').length, 2, 'a remote one in clear text without a password: both');
  t.same(redisExposure('rediss://oneport:s3cret@10.0.0.5:6380'), [], 'TLS and a password: nothing to say');
  t.same(redisExposure({ sentinels: [{ host: '10.0.0.5', port: 26379 }], name: 'm', password: 'x', tls: true } as never), []);
  t.same(redisExposure({ sentinels: [{ host: '10.0.0.5', port: 26379 }], name: 'm' } as never).length, 2);
});

t.test('Sentinel options: tls reaches the sentinels too, ACL user on the sentinels', async (t) => {
  const { redisOptions } = await import('../../gateway/server.js');
  const base = { sentinels: [{ host: '10.0.0.5', port: 26379 }], name: 'm', tls: false };
  t.match(redisOptions({ ...base, tls: true, sentinelUsername: 'watcher', sentinelPassword: 'p' }, 'PEM'), {
    tls: { ca: 'PEM' },
    sentinelTLS: { ca: 'PEM' },
    enableTLSForSentinelMode: true,
    sentinelUsername: 'watcher',
    sentinelPassword: 'p',
  });
  const plain = redisOptions(base, undefined) as Record<string, unknown>;
  t.notOk('sentinelTLS' in plain || 'tls' in plain, 'no TLS unless asked');
});
