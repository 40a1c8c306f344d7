/**
 * Joining with a one-time token instead of copying the CA key: a node started with only a token
 * gets its key made locally, its node and server certificates signed by a node that holds the CA
 * key, and works in the cluster (the node-to-node hop both ways). Tokens are single use, expire,
 * cannot be forged, and a request for another node id is refused; a node without the CA key
 * passes join requests on to one that has it; join calls are rate-limited per address.
 */
import t from 'tap';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startRedis, redisClient } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { rawRequest, basic, echoRoundTrip, startBackend } from '../helpers/net.js';
import { createCa, createNodeRequest, certificateFingerprint } from '../../certs/ca.js';
import { formatJoinToken, joinTokenHash, parseJoinToken } from '../../gateway/cluster/join.js';
import { sealedForm } from '../../gateway/cluster/seal.js';

const PREFIX = 'oneport:{dir}:';
const CLI = fileURLToPath(new URL('../../gateway/cli.ts', import.meta.url));

async function mint(node: ClusterNode, id: string, ttlSeconds?: number): Promise<string> {
  const admin = await node.admin();
  try {
    return (await admin.joinToken(id, ttlSeconds)).token;
  } finally {
    await admin.close();
  }
}

/** A join call as any client would send it: TLS to the one port, JSON. */
function joinCall(node: ClusterNode, token: string, id: string, csrFor = id): Promise<{ status: number; body: { error?: { code: string }; node?: string } }> {
  return node.api('POST', '/api/cluster/join', { body: { token, node: id, csr: createNodeRequest(csrFor).csr, names: ['localhost'] } });
}

t.test('a node joins with a token: its certificates come from the signer, and the hop works both ways', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const n1 = await cluster.start('n1', { limits: { joinsPerAddressPerMinute: 100 } });
  await electedLeader([n1]);
  const token = await mint(n1, 'j2');
  t.equal(parseJoinToken(token)?.fingerprint, certificateFingerprint(cluster.ca.cert), 'the token pins the cluster CA');
  const direct = redisClient(t, redis.url);
  t.equal(await direct.exists(`${PREFIX}join:${joinTokenHash(parseJoinToken(token)!.secret)}`), 1, 'Redis holds the token\'s hash');
  t.notOk(JSON.stringify(await direct.keys(`${PREFIX}*`)).includes(token.split('.')[2]!), 'not the token itself');

  const tokenFile = join(cluster.dir, 'j2.token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const j2 = await cluster.start('j2', { cluster: { joinTokenFile: tokenFile } }, { withCa: false });
  const joined = await j2.waitFor((l) => l.event === 'joined');
  t.equal(joined.via, 'n1');
  t.notOk(existsSync(join(j2.state, 'ca-key.pem')), 'the joined node holds no CA key');
  t.ok(existsSync(join(j2.state, 'seal.key')), 'but the key ring\'s seal key');
  t.ok(sealedForm((await direct.get(`${PREFIX}keys`)) ?? ''), 'the key ring in Redis is sealed');
  t.equal(readFileSync(join(j2.state, 'ca.pem'), 'utf8'), cluster.ca.cert, 'it trusts the cluster CA');
  await n1.waitFor((l) => l.event === 'node-joined' && l.node === 'j2');
  t.notOk(j2.logs.concat(n1.logs).some((l) => JSON.stringify(l).includes(token.split('.')[2]!)), 'the token is in no log');
  t.ok(readFileSync(join(n1.state, 'audit.log'), 'utf8').includes('"action":"node.join"'), 'the join is audited');

  const token2 = await adminToken(n1);
  const [deskA, deskB] = [await startBackend(t), await startBackend(t)];
  for (const [name, node, port] of [['on-n1', 'n1', deskA.port], ['on-j2', 'j2', deskB.port]] as const) {
    const r = await n1.api('PUT', `/api/vms/${name}`, { token: token2, body: { node, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['alice'] } });
    t.equal(r.status, 200);
  }
  t.equal((await n1.api('PUT', '/api/users/alice', { token: token2, body: { password: 'alice-password-1' } })).status, 200);
  // j2 checks n1's session token with the key ring it opened with the seal key it was given.
  await eventually(async () => ((await j2.api('GET', '/api/vms/on-j2', { token: token2 })).status === 200 ? true : undefined), 5_000, 'VMs on j2');
  for (const [entry, vm] of [[j2, 'on-n1'], [n1, 'on-j2']] as const) {
    const r = await rawRequest(entry.port, `CONNECT ${vm}:5900 HTTP/1.1\r\nHost: ${vm}:5900\r\nProxy-Authorization: ${basic('alice', 'alice-password-1')}\r\n\r\n`, { ca: cluster.ca.cert });
    t.match(r.head, /^HTTP\/1\.1 200/, `${vm} through ${entry.id}: hop with the joined node's certificate`);
    t.equal((await echoRoundTrip(r.socket, Buffer.from(`via ${entry.id}`))).toString(), `via ${entry.id}`);
    r.socket.destroy();
  }
  await n1.waitFor((l) => l.event === 'tunnel' && l.transport === 'hop' && l.vm === 'on-n1');
  await j2.waitFor((l) => l.event === 'tunnel' && l.transport === 'hop' && l.vm === 'on-j2');

  await t.test('refusals: reused, expired, forged, another cluster, another node id, a live node', async (t) => {
    const used = await mint(n1, 'j3');
    t.equal((await joinCall(n1, used, 'j3')).status, 200, 'a fresh token works once');
    const again = await joinCall(n1, used, 'j3');
    t.equal(again.status, 403, 'a reused token is refused');
    t.equal(again.body.error?.code, 'ONEPORT_ERR_FORBIDDEN');

    const short = await mint(n1, 'j4', 1);
    await eventually(async () => ((await direct.exists(`${PREFIX}join:${joinTokenHash(parseJoinToken(short)!.secret)}`)) === 0 ? true : undefined), 5_000, 'token expired');
    t.equal((await joinCall(n1, short, 'j4')).status, 403, 'an expired token is refused');

    const forged = formatJoinToken({ fingerprint: certificateFingerprint(cluster.ca.cert), secret: randomBytes(32) });
    t.equal((await joinCall(n1, forged, 'j4')).status, 403, 'a forged token is refused');
    const otherCa = formatJoinToken({ fingerprint: certificateFingerprint(createCa().cert), secret: parseJoinToken(await mint(n1, 'j4'))!.secret });
    t.equal((await joinCall(n1, otherCa, 'j4')).status, 403, 'a token naming another CA is refused');

    const forJ5 = await mint(n1, 'j5');
    const wrongCsr = await joinCall(n1, forJ5, 'j5', 'n1');
    t.equal(wrongCsr.status, 400, 'a certificate request for another node id is refused');
    t.equal(wrongCsr.body.error?.code, 'ONEPORT_ERR_VALIDATION');
    t.equal((await joinCall(n1, forJ5, 'j6')).status, 403, 'a token used for another node id than minted for is refused');
    t.equal((await joinCall(n1, forJ5, 'j5')).status, 403, '... and is spent');

    const live = await joinCall(n1, await mint(n1, 'j2'), 'j2');
    t.equal(live.status, 409, 'a token never takes over a live node');
  });

  await t.test('the CLI mints a token into a private file', async (t) => {
    const out = join(cluster.dir, 'j9.token');
    // Not spawnSync: a loop blocked for the CLI's run (seconds under load) missed the node closing
    // an idle keep-alive connection, and the next call went out on it ("other side closed").
    const cli = await new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, ['--import', 'tsx', CLI, '--state', n1.state, 'cluster', 'join-token', 'j9', '--ttl', '600', '--out', out], { encoding: 'utf8' }, (err, stdout, stderr) =>
        resolve({ status: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
      );
    });
    t.equal(cli.status, 0, cli.stderr);
    t.equal(statSync(out).mode & 0o777, 0o600, 'mode 0600');
    const token = readFileSync(out, 'utf8').trim();
    t.notOk(cli.stdout.includes(token) || cli.stderr.includes(token), 'and not printed');
    t.match(cli.stderr, /valid until/);
    t.equal((await joinCall(n1, token, 'j9')).status, 200, 'the token works');
  });

  await t.test('the token can come from the environment (ONEPORT_JOIN_TOKEN), and is not used again', async (t) => {
    // The node process inherits this test's environment.
    const startWithToken = async (token: string): Promise<ClusterNode> => {
      process.env.ONEPORT_JOIN_TOKEN = token;
      try {
        return await cluster.start('j10', {}, { withCa: false });
      } finally {
        delete process.env.ONEPORT_JOIN_TOKEN;
      }
    };
    const j10 = await startWithToken(await mint(n1, 'j10'));
    t.equal((await j10.waitFor((l) => l.event === 'joined')).via, 'n1');
    await j10.stop();
    // Restarted with another token: it already holds its certificates and does not ask again.
    const again = await startWithToken(await mint(n1, 'unused'));
    await again.waitFor((l) => l.event === 'join-token-unused');
  });

  await t.test('a node without the CA key passes a join request on to one that holds it', async (t) => {
    const r = await joinCall(j2, await mint(n1, 'j7'), 'j7');
    t.equal(r.status, 200);
    await n1.waitFor((l) => l.event === 'node-joined' && l.node === 'j7' && l.forwardedBy === 'j2');
  });

  await t.test('join calls are rate-limited per client address', async (t) => {
    const junk = formatJoinToken({ fingerprint: certificateFingerprint(cluster.ca.cert), secret: randomBytes(32) });
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) statuses.push((await joinCall(j2, junk, 'j8')).status);
    t.equal(statuses.at(-1), 429, `the 11th call in a minute gets 429 (${statuses.join(',')})`);
  });
});
