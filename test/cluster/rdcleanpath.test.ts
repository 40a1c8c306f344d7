/**
 * RDCleanPath through a cluster, on real processes and a real redis-server: a browser's request
 * enters a node that does not own the VM; the entry node authorizes it, hops to the owner node for
 * the console (node TLS), and does X.224 and TLS with the console over that hop.
 */
import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { twoNodesWithWin } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { closeOf, openWs, opened } from '../helpers/ws.js';
import { answer, request, roundTrip, startRdpConsole } from '../helpers/rdp-console.js';
import { SHADOW_CC_SSL } from '../fixtures/rdp-packets.js';

t.test('an RDCleanPath client on a node that does not own the VM reaches its console through the owner', async (t) => {
  const rdp = await startRdpConsole(t);
  const { cluster, a: owner, b: entry, ticket: ticketAt } = await twoNodesWithWin(t, rdp.port);
  const ticket = await ticketAt(entry);

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
