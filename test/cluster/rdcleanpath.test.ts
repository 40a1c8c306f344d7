/**
 * RDCleanPath through a cluster, on real processes and a real redis-server: a browser's request
 * enters a node that does not own the VM; the entry node authorizes it, hops to the owner node for
 * the console (node TLS), and does X.224 and TLS with the console over that hop.
 */
import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { startRedis } from '../helpers/redis.js';
import { adminToken, electedLeader, makeCluster } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { closeOf, openWs, opened } from '../helpers/ws.js';
import { answer, request, roundTrip, startRdpConsole } from '../helpers/rdp-console.js';
import { SHADOW_CC_SSL } from '../fixtures/rdp-packets.js';

t.test('an RDCleanPath client on a node that does not own the VM reaches its console through the owner', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const owner = await cluster.start('own');
  const entry = await cluster.start('via');
  const leader = await electedLeader([owner, entry]);
  const token = await adminToken(leader);
  const rdp = await startRdpConsole(t);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const put = await leader.api('PUT', '/api/vms/win', { token, body: { node: owner.id, endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: rdp.port }], users: ['alice'] } });
  t.equal(put.status, 200, 'the VM is on the owner node');
  for (const n of [owner, entry]) {
    await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/win', { token })).body.node === owner.id ? true : undefined), 5_000, `VM on ${n.id}`);
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      return view.body.nodes.length === 2 && view.body.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, 10_000, `all up on ${n.id}`);
  }
  const alice = (await entry.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const { ticket } = (await entry.api<{ ticket: string }>('POST', '/api/desktops/win/tickets', { token: alice, body: { protocol: 'rdp' } })).body;

  const ws = openWs(t, { port: entry.port, caCert: cluster.ca.cert }, '/rdcleanpath/win', {}, []);
  await opened(ws);
  ws.send(request(ticket));
  const pdu = await answer(ws);
  t.same(pdu.x224ConnectionPdu, SHADOW_CC_SSL, 'the console\'s Connection Confirm, through the hop');
  t.equal(new X509Certificate(pdu.serverCertChain![0]!).subject, new X509Certificate(rdp.cert).subject, 'and the console\'s certificate, from TLS over the hop');
  const payload = Buffer.from('rdp over tls over the hop '.repeat(500));
  t.same(await roundTrip(ws, payload), payload, 'the stream goes both ways');
  ws.close(1000);
  await closeOf(ws);
  await eventually(() => (entry.logs.some((l) => l.event === 'tunnel' && l.vm === 'win' && l.transport === 'rdcleanpath') ? true : undefined), 10_000, 'the entry node logged the tunnel');
  await eventually(() => (owner.logs.some((l) => l.event === 'tunnel' && l.vm === 'win' && l.transport === 'hop') ? true : undefined), 10_000, 'the owner node carried the hop');
  t.equal(rdp.accepted, 1, 'the console was dialled once, by the owner');
});
