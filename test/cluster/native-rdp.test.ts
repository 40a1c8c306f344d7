/**
 * Native RDP in a cluster, on real processes and a real redis-server: a native client enters at a
 * node that does not own its VM; the entry node checks and spends the ticket, hops to the owner,
 * and the owner's console gets the Connection Request without the ticket. A replay at the owner's
 * own port is refused at once: single use is cluster-wide.
 */
import t from 'tap';
import { once } from 'node:events';
import { twoNodesWithWin } from '../helpers/cluster.js';
import { closedWithin, connectRaw } from '../helpers/net.js';
import { opening, startRdpConsole } from '../helpers/rdp.js';
import * as R from '../fixtures/rdp-packets.js';
import { REFUSAL } from '../../gateway/tunnel/legs/rdp.js';

t.test('a native RDP client entering at another node reaches the owner\'s console through the hop', async (t) => {
  const rdpConsole = await startRdpConsole(t);
  const { a: owner, b: entry, ticket: ticketAt } = await twoNodesWithWin(t, rdpConsole.port);
  const ticket = await ticketAt(entry);

  const entryMark = entry.logs.length;
  const ownerMark = owner.logs.length;
  const s = await connectRaw(entry.port);
  s.write(opening.pcb(`${ticket}.win`));
  const [answer] = (await once(s, 'data')) as [Buffer];
  t.same(answer, R.SHADOW_CC_SSL, "the owner's console answered through the hop");
  t.same(rdpConsole.requests, [R.FREERDP_CR], 'the console got the Connection Request without the preconnection PDU, the ticket nowhere');
  s.write('after TLS');
  const [echo] = (await once(s, 'data')) as [Buffer];
  t.equal(echo.toString(), 'after TLS', 'bytes both ways');
  s.end();
  const entryLine = await entry.waitFor((l) => l.event === 'tunnel' && l.vm === 'win', 10_000, { after: entryMark });
  t.match(entryLine, { transport: 'rdp', protocol: 'rdp', user: 'alice', consoleNode: owner.id }, 'the entry node logs the native tunnel');
  const ownerLine = await owner.waitFor((l) => l.event === 'tunnel' && l.vm === 'win', 10_000, { after: ownerMark });
  t.equal(ownerLine.transport, 'hop', 'the owner logs its half as a hop');
  t.notOk(JSON.stringify([...entry.logs, ...owner.logs]).includes(ticket), 'no ticket in either log');

  // The same ticket at the owner's port, from another address: spent, cluster-wide.
  const replay = await connectRaw(owner.port, { localAddress: '127.0.0.2' });
  replay.write(opening.loadBalanceInfo(`${ticket}.win`));
  const { data, elapsedMs } = await closedWithin(replay, 5000);
  t.same(data, REFUSAL, `the replay is refused at once (${elapsedMs} ms)`);
  t.equal(rdpConsole.accepted, 1, 'and reached no console');
});
