/**
 * `oneport doctor` (README "Install as a service"): against a real state folder, a real running
 * gateway and a real redis-server, a sound deployment passes, and each thing that breaks
 * deployments is found, with its one-line fix, and makes the command exit 1.
 */
import t from 'tap';
import net from 'node:net';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { buildConfig, type ConfigInput } from '../../gateway/config.js';
import { type Finding, descriptorsNeeded, doctorStatus, runDoctor } from '../../gateway/doctor.js';
import { startTestGateway } from '../helpers/gateway.js';
import { startRedis, startSentinel } from '../helpers/redis.js';
import { closedPort, freePort } from '../helpers/net.js';
import { testPki } from '../helpers/certs.js';
import { deadline } from '../helpers/wait.js';

const run = promisify(execFile);
const CLI = new URL('../../gateway/cli.ts', import.meta.url).pathname;

/** Findings of one check that are not ok. */
function problems(findings: readonly Finding[], check: Finding['check']): Finding[] {
  return findings.filter((f) => f.check === check && f.severity !== 'ok');
}

t.test('a sound node passes every check', async (t) => {
  const redis = await startRedis(t, { args: ['--appendonly', 'yes'] });
  const gw = await startTestGateway(t);
  const cfg = buildConfig({ state: gw.state, listen: `127.0.0.1:${gw.port}`, limits: { maxConnections: 100 }, cluster: { redis: redis.url } });
  const findings = await runDoctor(cfg);
  t.same(findings.filter((f) => f.severity !== 'ok'), [], 'no warning, no failure');
  t.same([...new Set(findings.map((f) => f.check))].sort(), ['certificate', 'clock', 'descriptors', 'port', 'redis', 'state'], 'every check ran');
  t.match(findings.find((f) => f.check === 'port')?.message, /oneport answers on 127\.0\.0\.1:\d+ \(TLS, \/healthz ok\)/);
  t.equal(doctorStatus(findings), 0);
});

t.test('state folder modes, and files the service user cannot replace', async (t) => {
  const gw = await startTestGateway(t);
  const base = { state: gw.state, listen: `127.0.0.1:${gw.port}`, limits: { maxConnections: 100 } };
  chmodSync(gw.state, 0o770);
  chmodSync(join(gw.state, 'ca-key.pem'), 0o644);
  const found = problems(await runDoctor(buildConfig(base)), 'state');
  t.match(found, [
    { severity: 'fail', message: /has mode 770: others can write it/, fix: `chmod 700 ${gw.state}` },
    { severity: 'fail', message: /ca-key\.pem holds secrets and has mode 644/, fix: `chmod 600 ${join(gw.state, 'ca-key.pem')}` },
  ]);
  chmodSync(gw.state, 0o700);
  chmodSync(join(gw.state, 'ca-key.pem'), 0o600);
  t.same(problems(await runDoctor(buildConfig(base)), 'state'), [], 'fixed as told, the check passes');
  if (process.getuid?.() === 0) {
    // What `sudo oneport ...` leaves behind: a file the service user does not own.
    const file = join(gw.state, 'revoked-sessions.json');
    writeFileSync(file, '[]', { mode: 0o600 });
    chownSync(file, 4242, 4242);
    t.match(problems(await runDoctor(buildConfig(base)), 'state'), [{ severity: 'fail', message: /revoked-sessions\.json belongs to uid 4242, the folder to uid 0/, fix: `chown 0 ${file}` }]);
    chownSync(file, 0, 0);
  }
  const missing = problems(await runDoctor(buildConfig({ ...base, state: join(gw.state, 'nope') })), 'state');
  t.match(missing, [{ severity: 'warn', message: /does not exist yet/, fix: /^oneport init --state / }], 'a folder the first start will make is a warning');
});

t.test('descriptor limit against limits.maxConnections, of this process or of the service (--pid)', async (t) => {
  const gw = await startTestGateway(t);
  const base = { state: gw.state, listen: `127.0.0.1:${gw.port}` };
  t.match(problems(await runDoctor(buildConfig({ ...base, workers: 1, limits: { maxConnections: 10_000_000 } })), 'descriptors'), [
    { severity: 'fail', message: /limits\.maxConnections 10000000 needs 20001024 per process/, fix: /^LimitNOFILE=20001024 in the unit/ },
  ]);
  // With workers, each process holds only its share of the tunnels (the limit is per process).
  t.match(problems(await runDoctor(buildConfig({ ...base, workers: 4, limits: { maxConnections: 10_000_000 } })), 'descriptors'), [
    { severity: 'fail', message: /needs 6251024 per process \(two per tunnel, over 4 workers with 25% head room, plus 1024\)/, fix: /^LimitNOFILE=6251024 in the unit/ },
  ]);
  const clusterNode = buildConfig({ ...base, workers: 4, limits: { maxConnections: 10_000_000 }, cluster: { redis: 'redis://127.0.0.1:1' } });
  t.equal(descriptorsNeeded(clusterNode), 6_251_024, 'a cluster node runs its workers too');
  t.equal(descriptorsNeeded(buildConfig({ ...base, workers: 4 })), 13_524, 'the default 20000 connections over 4 workers fit a 20000 limit');
  // A stand-in for the service: a process whose limit was lowered before it started.
  const svc = spawn('bash', ['-c', 'ulimit -n 512 && echo lowered && exec cat'], { stdio: ['pipe', 'pipe', 'ignore'] });
  t.teardown(() => svc.kill('SIGKILL'));
  await Promise.race([once(svc.stdout, 'data'), deadline(10_000, 'the lowered limit')]);
  const cfg = buildConfig({ ...base, workers: 1, limits: { maxConnections: 100 } });
  t.same(problems(await runDoctor(cfg), 'descriptors'), [], 'this process has enough for 100 connections');
  const found = problems(await runDoctor(cfg, { pid: svc.pid! }), 'descriptors');
  t.match(found, [{ severity: 'fail', message: `open-file limit of process ${svc.pid} is 512; limits.maxConnections 100 needs 1224 per process (two per tunnel, plus 1024)` }]);
});

t.test('certificates: expiry, names, and the key that belongs to them', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-doctor-certs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pki = testPki(['gw.example.test']);
  const other = testPki(['other.example.test']);
  const file = (name: string, text: string): string => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  const cert = file('cert.pem', pki.server.cert);
  const key = file('key.pem', pki.server.key);
  const input = (c: ConfigInput): ConfigInput => ({ state: join(dir, 'state'), listen: '127.0.0.1:0', limits: { maxConnections: 100 }, ...c });
  const soon = problems(await runDoctor(buildConfig(input({ serverNames: ['gw.example.test'], tls: { certificates: [{ cert, key }] } }))), 'certificate');
  t.match(soon, [{ severity: 'warn', message: /cert\.pem expires in 0 days/, fix: /^renew .*cert\.pem/ }], 'a certificate valid for one more day is a warning');
  const later = () => Date.now() + 2 * 86_400_000;
  t.match(problems(await runDoctor(buildConfig(input({ serverNames: ['gw.example.test'], tls: { certificates: [{ cert, key }] } })), { now: later }), 'certificate'), [
    { severity: 'fail', message: /cert\.pem expired on / },
  ]);
  t.match(problems(await runDoctor(buildConfig(input({ serverNames: ['gw.example.test', 'portal.example.test'], tls: { certificates: [{ cert, key }] } }))), 'certificate'), [
    { severity: 'warn' },
    { severity: 'fail', message: /no certificate names portal\.example\.test/, fix: /tls\.certificates/ },
  ]);
  const wrongKey = file('other-key.pem', other.server.key);
  t.match(problems(await runDoctor(buildConfig(input({ serverNames: ['gw.example.test'], tls: { certificates: [{ cert, key: wrongKey }] } }))), 'certificate'), [
    { severity: 'warn' },
    { severity: 'fail', message: /does not belong to its key/ },
  ]);
});

t.test('Redis: reachability, persistence, eviction, clock skew against TIME', async (t) => {
  const gw = await startTestGateway(t);
  const base = { state: gw.state, listen: `127.0.0.1:${gw.port}`, limits: { maxConnections: 100 } };
  const volatile = await startRedis(t, { args: ['--maxmemory-policy', 'allkeys-lru'] }); // and --save '' --appendonly no
  const found = problems(await runDoctor(buildConfig({ ...base, cluster: { redis: volatile.url } })), 'redis');
  t.match(found, [
    { severity: 'fail', message: /persists nothing .*loses every user, VM and signing key/, fix: /appendonly yes/ },
    { severity: 'fail', message: /maxmemory-policy allkeys-lru/, fix: /noeviction/ },
  ]);
  const snapshots = await startRedis(t, { args: ['--save', '60 1'] });
  t.match(problems(await runDoctor(buildConfig({ ...base, cluster: { redis: snapshots.url } })), 'redis'), [{ severity: 'warn', message: /persists by snapshots only \(save "60 1"\)/ }]);

  const sound = await startRedis(t, { args: ['--appendonly', 'yes'] });
  const cfg = buildConfig({ ...base, cluster: { redis: sound.url } });
  t.match(problems(await runDoctor(cfg, { now: () => Date.now() + 5000 }), 'clock'), [
    { severity: 'fail', message: /this clock is (49|50)\d\d ms ahead of Redis TIME/, fix: /NTP/ },
  ]);
  t.match(problems(await runDoctor(cfg, { now: () => Date.now() - 400 }), 'clock'), [{ severity: 'warn', message: /behind Redis TIME/ }]);

  const gone = `redis://127.0.0.1:${await closedPort()}`;
  const unreachable = await runDoctor(buildConfig({ ...base, cluster: { redis: gone } }), { timeoutMs: 1000 });
  t.match(problems(unreachable, 'redis'), [{ severity: 'fail', message: /does not answer/, fix: /cluster\.redis/ }]);
  t.equal(doctorStatus(unreachable), 1);
});

t.test('Sentinel: each sentinel is asked for the master group and its quorum', async (t) => {
  const gw = await startTestGateway(t);
  const master = await startRedis(t, { args: ['--appendonly', 'yes'] });
  const sentinel = await startSentinel(t, { masterPort: master.port, replicas: 0 });
  const dead = await closedPort();
  const redis = { sentinels: [{ host: '127.0.0.1', port: sentinel.port }, { host: '127.0.0.1', port: dead }], name: sentinel.clientOptions.name };
  const findings = await runDoctor(buildConfig({ state: gw.state, listen: `127.0.0.1:${gw.port}`, limits: { maxConnections: 100 }, cluster: { redis } }), { timeoutMs: 1000 });
  t.match(findings.filter((f) => f.check === 'sentinel'), [
    { severity: 'ok', message: new RegExp(`sentinel 127\\.0\\.0\\.1:${sentinel.port} answers: master 127\\.0\\.0\\.1:${master.port}, quorum reachable`) },
    { severity: 'fail', message: new RegExp(`sentinel 127\\.0\\.0\\.1:${dead} does not answer`) },
  ]);
  t.same(problems(findings, 'redis'), [], 'the master found through the sentinel is checked too');
  const unknown = await runDoctor(buildConfig({ state: gw.state, listen: `127.0.0.1:${gw.port}`, cluster: { redis: { ...redis, name: 'nope' } } }), { timeoutMs: 1000 });
  t.match(problems(unknown, 'sentinel')[0], { severity: 'fail', message: /does not know master group "nope"/ });
});

t.test('the port: not running, or held by something that is not oneport', async (t) => {
  const gw = await startTestGateway(t);
  const base = { state: gw.state, limits: { maxConnections: 100 } };
  const free = await freePort();
  t.match(problems(await runDoctor(buildConfig({ ...base, listen: `127.0.0.1:${free}` })), 'port'), [
    { severity: 'warn', message: /nothing answers on 127\.0\.0\.1:\d+; the port is free/, fix: /systemctl start oneport/ },
  ]);
  const plain = net.createServer((s) => {
    s.on('error', () => {});
    s.end('SSH-2.0-OpenSSH_9.2\r\n');
  });
  plain.listen(0, '127.0.0.1');
  await once(plain, 'listening');
  t.teardown(() => plain.close());
  const port = (plain.address() as net.AddressInfo).port;
  t.match(problems(await runDoctor(buildConfig({ ...base, listen: `127.0.0.1:${port}` })), 'port'), [
    { severity: 'fail', message: /does not speak TLS/, fix: new RegExp(`stop what holds port ${port}`) },
  ]);
});

t.test('oneport doctor prints each finding with its fix and exits 1 on a failure', async (t) => {
  const gw = await startTestGateway(t);
  chmodSync(gw.state, 0o750);
  chmodSync(join(gw.state, 'server-key.pem'), 0o640);
  const r = await run(process.execPath, ['--import', 'tsx', CLI, 'doctor', '--state', gw.state], { env: { ...process.env, ONEPORT_LISTEN: `127.0.0.1:${gw.port}` } }).then(
    () => ({ code: 0, stdout: '' }),
    (e: { code: number; stdout: string }) => e,
  );
  t.equal(r.code, 1, 'exit status 1');
  t.match(r.stdout, `warn  state: state folder ${gw.state} has mode 750: others can list it\n      fix: chmod 700 ${gw.state}`);
  t.match(r.stdout, `FAIL  state: ${join(gw.state, 'server-key.pem')} holds secrets and has mode 640\n      fix: chmod 600 ${join(gw.state, 'server-key.pem')}`);
  t.match(r.stdout, /^ok {4}port: oneport answers on 127\.0\.0\.1:\d+/m);
  const json = await run(process.execPath, ['--import', 'tsx', CLI, 'doctor', '--json', '--state', gw.state], { env: { ...process.env, ONEPORT_LISTEN: `127.0.0.1:${gw.port}` } }).then(
    (x) => x.stdout,
    (e: { stdout: string }) => e.stdout,
  );
  t.ok((JSON.parse(json) as Finding[]).some((f) => f.check === 'state' && f.severity === 'warn'), '--json prints the same findings');
});
