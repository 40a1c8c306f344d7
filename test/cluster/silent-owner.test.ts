/**
 * A VM owner whose host goes silent (SIGSTOP: its sockets stay open, nothing answers) is failed
 * over on the heartbeat timeout (nodeTimeoutMs 1500) and the peers' port probes (started once it
 * missed two heartbeats, so they end about when its heartbeat expires), within the 3 s
 * the reliability issue sets for a silent host. The probe's deadline (1 s) must hold while the TLS
 * connection to the silent port is still being set up: the kernel accepts the TCP connection for
 * a stopped process, and undici does not abort a request in its connect phase (it waited for the
 * agent's 5 s connect timeout, so a SIGSTOPped owner was failed over only after 7-8 s; found by
 * bench/faults.ts). Real gateway processes, a real redis-server, default timing settings.
 *
 * The second test is a client who asks for a tunnel through a healthy node just after the owner
 * went silent: its hop to the owner waits for the TLS dial timeout (tunnel.dialTimeoutMs, 5 s)
 * even though the VM is promoted after about 2.5 s, so its first byte comes after 5 s instead of
 * 3 s, until cluster/reach.ts gave up a hop the moment the VM's record changes.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, logTime, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { fixedPortConsole } from '../helpers/console.js';
import { basic, freePort, rawRequest } from '../helpers/net.js';

/**
 * The target for a silent owner is 3 s to the client's first byte. Measured about 2.0 s
 * since the peers probe a node that missed two heartbeats before its heartbeat expires (cluster.ts
 * tick); 2.3-3.1 s before. The slack to 3 s is for a loaded machine (2 cores, shared).
 */
const WITHIN_MS = 3_000;

async function silentOwnerCluster(t: Test): Promise<{ leader: ClusterNode; owner: ClusterNode; replica: ClusterNode; token: string }> {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const nodes = await Promise.all(['s1', 's2', 's3'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const [owner, replica] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
  const token = await adminToken(leader);
  const port = await freePort();
  await fixedPortConsole(t, port, (s: net.Socket) => {
    s.write('RFB 003.008\n');
    s.pipe(s);
  });
  const r = await leader.api('PUT', '/api/vms/desk', { token, body: { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['root'] } });
  t.equal(r.status, 200);
  for (const n of nodes) await eventually(async () => ((await n.api<{ state: string }>('GET', '/api/vms/desk', { token })).body.state === 'running' ? true : undefined), 10_000, 'desk running everywhere');
  await eventually(async () => {
    const st = (await leader.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token })).body;
    return st.nodes.filter((n) => n.state === 'up').length === 3 ? true : undefined;
  }, 10_000, 'three nodes up');
  // A request to the owner first, so that peers hold pooled connections to it, as under load.
  await owner.api('GET', '/healthz');
  return { leader, owner, replica, token };
}

t.test('a SIGSTOPped owner: its VM is promoted to the replica within 3 s', async (t) => {
  const { leader, owner, replica } = await silentOwnerCluster(t);
  const mark = leader.logs.length;
  const stoppedAt = Date.now();
  owner.kill('SIGSTOP');
  t.teardown(() => owner.kill('SIGCONT'));
  const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'desk', 15_000, { after: mark });
  const ms = logTime(moved) - stoppedAt;
  t.equal(moved.to, replica.id, 'desk promoted to its replica');
  t.ok(ms <= WITHIN_MS, `owner SIGSTOP -> VM promoted in ${ms} ms (target <= ${WITHIN_MS} ms)`);
});

t.test('a tunnel asked for through a healthy node just after the owner went silent: first byte within 3 s', async (t) => {
  const { leader, owner, token } = await silentOwnerCluster(t);
  const ticket = (await leader.api<{ ticket: string }>('POST', '/api/desktops/desk/tickets', { token, body: { protocol: 'vnc' } })).body.ticket;
  t.ok(ticket, 'a ticket');
  const stoppedAt = Date.now();
  owner.kill('SIGSTOP');
  t.teardown(() => owner.kill('SIGCONT'));
  // The client arrives while the owner's heartbeat has not expired yet: the entry node hops to it.
  const res = await rawRequest(leader.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('root', ticket)}\r\n\r\n`, { timeoutMs: 20_000 });
  t.equal(res.status, 200, 'the tunnel opens (held while the VM is recovered)');
  const s = res.socket;
  const first = res.rest.length > 0 ? Promise.resolve() : new Promise<void>((resolve) => s.once('data', () => resolve()));
  s.resume();
  await first;
  s.destroy();
  const ms = Date.now() - stoppedAt;
  t.ok(ms <= WITHIN_MS, `owner SIGSTOP -> first byte of a tunnel asked for right after: ${ms} ms (target <= ${WITHIN_MS} ms)`);
});
