/**
 * The legacy RD Gateway pair across nodes, on real processes and a real redis-server: behind an
 * L4 balancer without affinity a client's RDG_OUT_DATA and RDG_IN_DATA reach different nodes;
 * the node holding the OUT recorded it in Redis, the node that got the IN relays it there over
 * node TLS, and the tunnel works as if both had come to one node.
 */
import t from 'tap';
import { startBackend } from '../helpers/net.js';
import { RdgLegacyClient } from '../helpers/rdg.js';
import { twoNodesWithWin } from '../helpers/cluster.js';

t.test('RDG_OUT_DATA on one node, RDG_IN_DATA on another', async (t) => {
  const echo = await startBackend(t);
  const { cluster, a, b, ticket: ticketAt } = await twoNodesWithWin(t, echo.port);
  const ticket = (): Promise<string> => ticketAt(a);

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
