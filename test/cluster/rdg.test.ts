/**
 * The legacy RD Gateway pair across nodes, on real processes and a real redis-server: behind an
 * L4 balancer without affinity a client's RDG_OUT_DATA and RDG_IN_DATA reach different nodes;
 * the node holding the OUT recorded it in Redis, the node that got the IN relays it there over
 * node TLS, and the tunnel works as if both had come to one node.
 */
import t from 'tap';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { startBackend } from '../helpers/net.js';
import { RdgLegacyClient } from '../helpers/rdg.js';

t.test('RDG_OUT_DATA on one node, RDG_IN_DATA on another', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const a = await cluster.start('na');
  const b = await cluster.start('nb');
  const leader = await electedLeader([a, b]);
  const token = await adminToken(leader);
  const echo = await startBackend(t);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const put = await leader.api('PUT', '/api/vms/win', { token, body: { node: a.id, endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: echo.port }], users: ['alice'] } });
  t.equal(put.status, 200, 'VM win on na');
  for (const n of [a, b]) {
    await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/win', { token })).body.node === a.id ? true : undefined), 5_000, `VM on ${n.id}`);
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      return view.body.nodes.length === 2 && view.body.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, 10_000, `both up on ${n.id}`);
  }
  const alice = (await a.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const ticket = async (): Promise<string> => (await a.api<{ ticket: string }>('POST', '/api/desktops/win/tickets', { token: alice, body: { protocol: 'rdp' } })).body.ticket;

  for (const [out, inn] of [[a, b], [b, a]] as const) {
    t.test(`OUT on ${out.id}, IN on ${inn.id}`, async (t) => {
      const outMark = out.logs.length;
      const inMark = inn.logs.length;
      const c = await RdgLegacyClient.connect([out.port, inn.port], cluster.ca.cert, `${out.id}${inn.id}0000-0000-0000-0000-000000000000`.slice(0, 36));
      t.teardown(() => c.destroy());
      t.match(await c.open(await ticket(), 'win'), { type: 'channel-response', errorCode: 0 }, 'channel opened');
      const data = Buffer.alloc(100_000, 0x42);
      for (let at = 0; at < data.length; at += 0xffff) c.send({ type: 'data', data: data.subarray(at, at + 0xffff) });
      t.same(await c.readData(data.length), data, 'data both ways through the relayed IN');
      const relayed = await inn.waitFor((l) => l.event === 'rdg-relayed', 5_000, { after: inMark });
      t.equal(relayed.node, out.id, `${inn.id} relayed the IN request to ${out.id}`);
      c.send({ type: 'close-channel', statusCode: 0 });
      t.match(await c.next(), { type: 'close-channel-response' });
      await c.closed();
      const line = await out.waitFor((l) => l.event === 'tunnel' && l.vm === 'win', 10_000, { after: outMark });
      t.match(line, { transport: 'rdg-http', user: 'alice', client: '127.0.0.1' }, `the tunnel is ${out.id}'s, with the client's own address`);
    });
  }
});
