/**
 * Three gateway processes on one real redis-server: one leader, forwarding of directory changes
 * to it from any node, mirrors converging, a tunnel entering at node A for a VM on node B through
 * the node-to-node hop (and nobody but a node on that path), and a leader killed with SIGKILL
 * replaced within 2 s.
 */
import t from 'tap';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, logTime } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { startBackend, rawRequest, readResponse, echoRoundTrip, basic } from '../helpers/net.js';

const CLI = fileURLToPath(new URL('../../gateway/cli.ts', import.meta.url));

interface ClusterView {
  leader: { node: string; epoch: number } | null;
  nodes: Array<{ id: string; state: string; leader: boolean; mirror: { version: number } | null }>;
  directory: { version: number };
}

t.test('a three-node cluster', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const [a, b, c] = await Promise.all(['n1', 'n2', 'n3'].map((id) => cluster.start(id)));
  const nodes = [a!, b!, c!];
  const leader = await electedLeader(nodes);
  const followers = nodes.filter((n) => n !== leader);
  t.comment(`leader: ${leader.id}`);

  // The first admin, created through a follower's control socket (forwarded to the leader), logs
  // in on the other follower.
  const token = await adminToken(followers[0]!, followers[1]!);
  t.ok(token, 'the new admin logs in on another follower');

  t.test('every node reports the same leader and three nodes up', async (t) => {
    for (const n of nodes) {
      const view = await eventually(async () => {
        const r = await n.api<ClusterView>('GET', '/api/cluster', { token });
        return r.body.nodes.length === 3 && r.body.nodes.every((x) => x.state === 'up') && r.body.leader ? r.body : undefined;
      }, 10_000, `cluster view on ${n.id}`);
      t.equal(view.leader?.node, leader.id, `${n.id} sees ${leader.id} lead`);
      t.ok(view.leader!.epoch >= 1, 'with an epoch');
    }
  });

  t.test('a write on a follower is executed by the leader and visible on all mirrors', async (t) => {
    const console1 = await startBackend(t);
    const put = await followers[1]!.api<{ name: string }>('PUT', '/api/vms/desk1', {
      token,
      body: { node: b!.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: console1.port }], users: ['alice'] },
    });
    t.equal(put.status, 200, 'forwarded write succeeds');
    t.equal(put.headers['oneport-leader'], leader.id, 'the answer says who executed it');
    for (const n of nodes) {
      const vm = await eventually(async () => {
        const r = await n.api<{ node: string }>('GET', '/api/vms/desk1', { token });
        return r.status === 200 ? r.body : undefined;
      }, 5_000, `desk1 on ${n.id}`);
      t.equal(vm.node, b!.id, `${n.id}'s mirror has desk1 on ${b!.id}`);
    }
  });

  // Lives as long as the cluster: later subtests use desk2 too.
  const console2 = await startBackend(t);
  t.test('a tunnel entering at node A for a VM on node B goes through B', async (t) => {
    const owner = b!;
    const entry = a!;
    let r = await entry.api('PUT', '/api/vms/desk2', {
      token,
      body: { node: owner.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: console2.port }], users: ['alice'] },
    });
    t.equal(r.status, 200);
    r = await entry.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
    t.equal(r.status, 200);
    const alice = await entry.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
    const ticket = await entry.api<{ ticket: string; connect: string }>('POST', '/api/desktops/desk2/tickets', { token: alice.body.token, body: { protocol: 'vnc' } });
    t.equal(ticket.status, 200, 'ticket issued on A');
    const before = owner.logs.length;
    const res = await rawRequest(entry.port, `CONNECT desk2:5900 HTTP/1.1\r\nHost: desk2:5900\r\nProxy-Authorization: ${basic('alice', ticket.body.ticket)}\r\n\r\n`);
    t.match(res.head, /^HTTP\/1\.1 200/, 'CONNECT through A answered 200');
    const echoed = await echoRoundTrip(res.socket, Buffer.from('hello through the hop'));
    t.equal(echoed.toString(), 'hello through the hop', 'bytes reach the console on B and back');
    t.equal(console2.accepted, 1, 'the console saw one connection');
    res.socket.destroy();
    const hopLine = await owner.waitFor((l) => l.event === 'tunnel' && l.transport === 'hop' && l.vm === 'desk2', 10_000, { after: before });
    t.equal(hopLine.user, 'alice', 'B logged the hop tunnel with the user');
    const entryLine = await entry.waitFor((l) => l.event === 'tunnel' && l.vm === 'desk2' && l.transport === 'connect');
    t.equal(entryLine.consoleNode, owner.id, 'A logged the tunnel with the owning node');
  });

  t.test('the node-to-node path refuses everyone but a node', async (t) => {
    const hop = `CONNECT desk2:5900 HTTP/1.1\r\nHost: desk2:5900\r\nOneport-Hop: ${a!.id}\r\nDesktop-Protocol: vnc\r\n\r\n`;
    const noCert = await tlsRequest(b!.port, hop, { ca: cluster.ca.cert });
    t.match(noCert, /^HTTP\/1\.1 403/, 'no certificate: 403');
    const user = cluster.userCert('alice');
    const withUser = await tlsRequest(b!.port, hop, { ca: cluster.ca.cert, cert: user.cert, key: user.key });
    t.match(withUser, /^HTTP\/1\.1 403/, 'a user certificate from the same CA: 403');
    const clear = await rawRequest(b!.port, hop);
    t.match(clear.head, /^HTTP\/1\.1 (403|407)/, 'clear text: refused');
    clear.socket.destroy();
  });

  t.test('`oneport cluster status` on any node shows the leader, every node and mirror versions', async (t) => {
    const out = await cli(c!.state, ['cluster', 'status', '--json']);
    const status = JSON.parse(out) as { leader: { node: string; epoch: number }; nodes: Array<{ id: string; state: string; mirror: { version: number; ageMs: number } }> };
    t.equal(status.leader.node, leader.id);
    t.same(status.nodes.map((n) => n.id).sort(), ['n1', 'n2', 'n3']);
    t.ok(status.nodes.every((n) => n.state === 'up' && n.mirror.version > 0 && n.mirror.ageMs >= 0), 'each node with its mirror version and age');
    const table = await cli(c!.state, ['cluster', 'status']);
    t.match(table, new RegExp(`leader: ${leader.id} \\(epoch \\d+\\)`), 'a readable summary');
  });

  t.test('a console ticket is single-use cluster-wide; rotation keeps issued tickets valid', async (t) => {
    const alice = await a!.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
    const issue = async (): Promise<string> => (await b!.api<{ ticket: string }>('POST', '/api/desktops/desk2/tickets', { token: alice.body.token, body: { protocol: 'vnc' } })).body.ticket;
    const ticket = await issue();
    const first = await rawRequest(a!.port, `CONNECT ${ticket}.desk2:5900 HTTP/1.1\r\n\r\n`);
    t.match(first.head, /^HTTP\/1\.1 200/, 'redeemed at node A');
    first.socket.destroy();
    const replay = await rawRequest(c!.port, `CONNECT ${ticket}.desk2:5900 HTTP/1.1\r\n\r\n`, { localAddress: '127.0.0.2' });
    t.match(replay.head, /^HTTP\/1\.1 407/, 'the same ticket from another client at node C: refused');
    const before = await issue();
    const rot = await cli(c!.state, ['cluster', 'rotate-keys']);
    t.match(rot, /rotated/);
    const after = await rawRequest(a!.port, `CONNECT ${before}.desk2:5900 HTTP/1.1\r\n\r\n`);
    t.match(after.head, /^HTTP\/1\.1 200/, 'a ticket signed with the previous key still works after rotation');
    after.socket.destroy();
  });

  t.test('`oneport vm move` through a follower: routing follows at once', async (t) => {
    const target = c!;
    const out = await cli(followers[0]!.state, ['vm', 'move', 'desk2', target.id]);
    t.match(out, new RegExp(`now on ${target.id}`));
    for (const n of nodes) {
      await eventually(async () => ((await n.api<{ node: string }>('GET', '/api/vms/desk2', { token })).body.node === target.id ? true : undefined), 5_000, `move seen on ${n.id}`);
    }
    const alice = await a!.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
    const ticket = (await a!.api<{ ticket: string }>('POST', '/api/desktops/desk2/tickets', { token: alice.body.token, body: { protocol: 'vnc' } })).body.ticket;
    const mark = target.logs.length;
    const res = await rawRequest(b!.port, `CONNECT ${ticket}.desk2:5900 HTTP/1.1\r\n\r\n`);
    t.match(res.head, /^HTTP\/1\.1 200/);
    t.equal((await echoRoundTrip(res.socket, Buffer.from('moved'))).toString(), 'moved');
    res.socket.destroy();
    await target.waitFor((l) => l.event === 'tunnel' && l.transport === 'hop' && l.vm === 'desk2', 10_000, { after: mark });
    t.pass('the tunnel entered at B went to the new owner C');
  });

  t.test('leader killed with SIGKILL: a new leader within 2 s', async (t) => {
    const firstEpoch = (await leader.waitFor((l) => l.event === 'leader-elected')).epoch;
    const survivors = nodes.filter((n) => n !== leader);
    const marks = survivors.map((n) => n.logs.length);
    const killedAt = Date.now();
    leader.kill('SIGKILL');
    await leader.exited();
    const elected = await Promise.race(survivors.map((n, i) => n.waitFor((l) => l.event === 'leader-elected', 10_000, { after: marks[i] }).then((l) => ({ n, l }))));
    const ms = logTime(elected.l) - killedAt;
    t.comment(`new leader ${elected.n.id} after ${ms} ms`);
    t.ok(ms < 2000, `replaced within 2 s (took ${ms} ms)`);
    t.ok(Number(elected.l.epoch) > Number(firstEpoch), `a higher epoch (${String(elected.l.epoch)} > ${String(firstEpoch)})`);
    const other = survivors.find((n) => n !== elected.n)!;
    const seen = await other.waitFor((l) => l.event === 'leader-changed' && l.leader === elected.n.id, 5_000);
    t.ok(Number(seen.epoch) > 0, 'the other survivor follows the new leader');
  });
});

function cli(state: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', CLI, '--state', state, ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`oneport ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

function tlsRequest(port: number, text: string, opts: { ca: string; cert?: string; key?: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: opts.ca, cert: opts.cert, key: opts.key });
    s.on('error', reject);
    s.once('secureConnect', () => {
      s.write(text);
      readResponse(s).then((r) => {
        s.destroy();
        resolve(r.head);
      }, reject);
    });
  });
}
