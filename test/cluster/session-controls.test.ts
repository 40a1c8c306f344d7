/**
 * Session controls across a cluster, on real gateway processes and a real redis-server:
 * - session caps count cluster-wide: a user at their cap on one node is refused on another, and
 *   two nodes admitting at the same moment never both take the last slot;
 * - GET /api/sessions on any node lists every node's tunnels (live bytes, entry and console node);
 *   DELETE on any node ends a tunnel held on another, or all of a user's;
 * - a node that does not answer is reported in the list, not left out;
 * - a crashed node's sessions stop counting against the caps.
 */
import t from 'tap';
import type net from 'node:net';
import { startRedis, redisClient } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { startBackend, rawRequest, closedWithin, echoRoundTrip } from '../helpers/net.js';

interface Listed {
  sessions: Array<{ id: string; user: string; vm: string; entryNode: string; consoleNode: string; bytesToConsole: number; bytesToClient: number; transport: string }>;
  nodes: Array<{ node: string; state: string; answered: boolean; sessions?: number; error?: string }>;
  complete: boolean;
}

t.test('caps, listing and terminating across three nodes', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const nodes = await Promise.all(['n1', 'n2', 'n3'].map((id) => cluster.start(id)));
  const [n1, n2, n3] = nodes as [ClusterNode, ClusterNode, ClusterNode];
  const leader = await electedLeader(nodes);
  const token = await adminToken(leader);
  const console1 = await startBackend(t);
  t.equal((await leader.api('PUT', '/api/vms/desk', { token, body: { node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: console1.port, publishedPort: 5900 }], users: ['alice', 'bob'] } })).status, 200);
  t.equal((await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1', maxSessions: 1 } })).status, 200);
  t.equal((await leader.api('PUT', '/api/users/bob', { token, body: { password: 'bob-password-1', maxSessions: 1 } })).status, 200);
  for (const n of nodes) {
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      const users = await n.api<Array<{ name: string; maxSessions?: number }>>('GET', '/api/users', { token });
      return view.body.nodes.length === 3 && view.body.nodes.every((x) => x.state === 'up') && users.body.filter((u) => u.maxSessions === 1).length === 2 ? true : undefined;
    }, 10_000, `all up, with the users, on ${n.id}`);
  }
  const ticket = async (user: string): Promise<string> => {
    const r = await n1.api<{ ticket: string }>('POST', '/api/tickets', { token, body: { user, vm: 'desk', protocol: 'vnc' } });
    return r.body.ticket;
  };
  const connect = async (via: ClusterNode, user: string): Promise<{ status: number; socket: net.Socket; body: string }> => {
    const r = await rawRequest(via.port, `CONNECT ${await ticket(user)}.desk:5900 HTTP/1.1\r\n\r\n`);
    r.socket.on('error', () => {});
    t.teardown(() => r.socket.destroy());
    return { status: r.status, socket: r.socket as net.Socket, body: r.body };
  };
  const direct = redisClient(t, redis.url);
  const slotsFree = (user: string) => eventually(async () => ((await direct.zcard(`oneport:{dir}:caps:user:${user}`)) === 0 ? true : undefined), 5_000, `${user}'s slots free`);

  // alice's one session enters at n2 (and hops to n1): she is at her cap everywhere.
  const a = await connect(n2, 'alice');
  t.equal(a.status, 200, 'alice: a session through n2');
  t.same(await echoRoundTrip(a.socket, Buffer.from('hello')), Buffer.from('hello'));
  for (const via of [n3, n1]) {
    const over = await connect(via, 'alice');
    t.equal(over.status, 429, `alice: a second session through ${via.id} is refused`);
    t.match(over.body, 'ONEPORT_ERR_SESSION_LIMIT');
  }

  // Two nodes admitting bob at the same moment: exactly one gets in, every time.
  for (let round = 1; round <= 3; round++) {
    const [x, y] = await Promise.all([connect(n1, 'bob'), connect(n3, 'bob')]);
    t.same([x.status, y.status].sort(), [200, 429], `round ${round}: one session, one refusal`);
    (x.status === 200 ? x : y).socket.destroy();
    await slotsFree('bob');
  }
  const b = await connect(n3, 'bob');
  t.equal(b.status, 200, 'bob: a session through n3');

  // Any node lists every node's tunnels, with live bytes.
  const list = await n1.api<Listed>('GET', '/api/sessions', { token });
  t.equal(list.status, 200);
  t.equal(list.body.complete, true);
  t.same(list.body.nodes.map((x) => [x.node, x.answered]).sort(), [['n1', true], ['n2', true], ['n3', true]], 'every node answered');
  const aliceListed = list.body.sessions.find((x) => x.user === 'alice');
  t.match(aliceListed, { id: /^n2:\d+$/, vm: 'desk', entryNode: 'n2', consoleNode: 'n1', transport: 'connect', bytesToConsole: 5, bytesToClient: 5 }, 'alice\'s tunnel, held by n2, listed by n1');
  t.match(list.body.sessions.find((x) => x.user === 'bob'), { id: /^n3:\d+$/, entryNode: 'n3' });
  t.equal(list.body.sessions.length, 2, 'hops are not listed twice');

  // n3 ends alice's tunnel, held on n2; n2 ends all of bob's, held on n3.
  const killed = await n3.api<{ ended: number }>('DELETE', `/api/sessions/${encodeURIComponent(aliceListed!.id)}`, { token });
  t.match(killed, { status: 200, body: { ended: 1 } });
  await closedWithin(a.socket, 5000);
  t.pass('alice\'s client sees its connection close');
  const all = await n2.api<{ ended: number; complete: boolean }>('DELETE', '/api/users/bob/sessions', { token });
  t.match(all, { status: 200, body: { ended: 1, complete: true } });
  await closedWithin(b.socket, 5000);
  t.equal((await n1.api('DELETE', '/api/sessions/n9%3A1', { token })).status, 404, 'a session on an unknown node: 404');
  await slotsFree('alice');

  // A node that does not answer is reported, not silently dropped.
  n3.kill('SIGSTOP');
  t.teardown(() => n3.kill('SIGCONT'));
  const partial = await n1.api<Listed>('GET', '/api/sessions', { token });
  t.equal(partial.status, 200);
  t.equal(partial.body.complete, false, 'the list says it is incomplete');
  t.match(partial.body.nodes.find((x) => x.node === 'n3'), { answered: false, error: /no answer within|node is/ }, 'and which node did not answer');

  // A crashed node's sessions stop counting.
  const c = await connect(n2, 'alice');
  t.equal(c.status, 200, 'alice: a session through n2 again');
  n2.kill('SIGKILL');
  await n2.exited();
  const afterCrash = await eventually(async () => {
    const r = await connect(n1, 'alice');
    return r.status === 200 ? r : undefined;
  }, 15_000, 'alice admitted again');
  t.equal(afterCrash.status, 200, 'the crashed node\'s slot expired: alice gets in through n1');
});
