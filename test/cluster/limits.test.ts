/**
 * The per-address limit in a cluster (refused at accept, listener.ts): the node-to-node hops a
 * node receives come from the other nodes' addresses and carry many clients' tunnels, so they are
 * not held to limits.maxConnectionsPerAddress; the clients themselves still are.
 *
 * Two gateway processes on one real redis-server, both on 127.0.0.1; the test's clients come
 * from 127.0.0.2-5 (loopback), so the only connections from 127.0.0.1 are the nodes' own (and the
 * test's API calls, which the cluster view exempts as soon as the nodes see each other).
 */
import t from 'tap';
import type net from 'node:net';
import { startRedis } from '../helpers/redis.js';
import { adminToken, electedLeader, makeCluster } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { closedWithin, connectRaw, echoRoundTrip, rawRequest, startBackend } from '../helpers/net.js';

t.test('hops from another node are not held to the per-address limit; clients are', async (t) => {
  const perAddress = 2;
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { limits: { maxConnectionsPerAddress: perAddress } });
  const [entry, owner] = await Promise.all(['n1', 'n2'].map((id) => cluster.start(id)));
  await electedLeader([entry!, owner!]);
  const token = await adminToken(entry!, owner!);
  for (const n of [entry!, owner!]) {
    await eventually(async () => {
      const r = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      return r.body.nodes.length === 2 && r.body.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, 10_000, `both nodes up in ${n.id}'s view`);
  }

  const console1 = await startBackend(t);
  let r = await entry!.api('PUT', '/api/vms/desk', { token, body: { node: owner!.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: console1.port, publishedPort: 5900 }], users: ['alice'] } });
  t.equal(r.status, 200);
  r = await entry!.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  t.equal(r.status, 200);
  await eventually(async () => ((await owner!.api<{ node: string }>('GET', '/api/vms/desk', { token })).body.node === owner!.id ? true : undefined), 5_000, 'desk on the owner');
  const alice = await entry!.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
  const ticket = async (): Promise<string> => (await entry!.api<{ ticket: string }>('POST', '/api/desktops/desk/tickets', { token: alice.body.token, body: { protocol: 'vnc' } })).body.ticket;

  // Four clients, one tunnel each, all entering at n1 for a VM on n2: four hops from n1's address,
  // twice the per-address limit.
  const tunnels: net.Socket[] = [];
  for (const client of ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']) {
    const res = await rawRequest(entry!.port, `CONNECT ${await ticket()}.desk:5900 HTTP/1.1\r\n\r\n`, { localAddress: client });
    t.match(res.head, /^HTTP\/1\.1 200/, `${client}: 200 through the hop`);
    t.same(await echoRoundTrip(res.socket, Buffer.from(client)), Buffer.from(client), `${client}: bytes reach the console on n2`);
    tunnels.push(res.socket as net.Socket);
  }
  t.teardown(() => tunnels.forEach((s) => s.destroy()));
  t.equal(console1.open.size, 4, 'the console holds four connections');

  // A client is still held to it: 127.0.0.2 has one tunnel; one more is allowed, the next refused.
  const second = await connectRaw(entry!.port, { localAddress: '127.0.0.2' });
  t.teardown(() => second.destroy());
  const third = await connectRaw(entry!.port, { localAddress: '127.0.0.2' });
  const { data } = await closedWithin(third, 2000);
  t.equal(data.length, 0, 'a third connection from 127.0.0.2 is closed at once');
});
