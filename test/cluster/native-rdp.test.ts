/**
 * Native RDP in a cluster, on real processes and a real redis-server: a native client enters at a
 * node that does not own its VM; the entry node checks and spends the ticket, hops to the owner,
 * and the owner's console gets the Connection Request without the ticket. A replay at the owner's
 * own port is refused at once: single use is cluster-wide.
 */
import t from 'tap';
import { once } from 'node:events';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { closedWithin, connectRaw } from '../helpers/net.js';
import { opening, startRdpConsole } from '../helpers/rdp.js';
import * as R from '../fixtures/rdp-packets.js';
import { REFUSAL } from '../../gateway/tunnel/legs/rdp.js';

t.test('a native RDP client entering at another node reaches the owner\'s console through the hop', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const owner = await cluster.start('own');
  const entry = await cluster.start('entry');
  const nodes = [owner, entry];
  const leader = await electedLeader(nodes);
  const token = await adminToken(leader);
  const rdpConsole = await startRdpConsole(t);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const put = await leader.api('PUT', '/api/vms/win', { token, body: { node: owner.id, endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: rdpConsole.port }], users: ['alice'] } });
  t.equal(put.status, 200, 'VM win on the owner');
  for (const n of nodes) {
    await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/win', { token })).body.node === owner.id ? true : undefined), 5_000, `VM on ${n.id}`);
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      return view.body.nodes.length === 2 && view.body.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, 10_000, `all up on ${n.id}`);
  }
  const alice = (await entry.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const { ticket } = (await entry.api<{ ticket: string }>('POST', '/api/desktops/win/tickets', { token: alice, body: { protocol: 'rdp' } })).body;

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
