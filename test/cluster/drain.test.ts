/**
 * Drain (issue 15, "Upgrades that drop nothing"), with real processes on a real redis-server:
 * - `oneport node drain <follower> --move-vms`, asked at the leader (it reaches the follower): the
 *   follower goes unready (readyz 503; a new tunnel arriving within unreadyMs is still served and
 *   handed over with the others; after it, 503 + Retry-After) while its port stays open,
 *   moves its VM to the replica through the leader, tells its WebSocket client to resume at the
 *   replica (4001 naming it), closes its CONNECT tunnel, and exits 0 long before shutdown.drainMs.
 * - SIGTERM on a node: the same drain without moving VMs; its WebSocket client is sent to the
 *   other up node, and the process exits 0 once its tunnels are gone.
 */
import t, { type Test } from 'tap';
import { startRedis } from '../helpers/redis.js';
import { startBackend, rawRequest, echoRoundTrip, closedWithin } from '../helpers/net.js';
import { makeCluster, electedLeader, adminToken, type ClusterNode, type TestCluster } from '../helpers/cluster.js';
import { eventually, deadline } from '../helpers/wait.js';
import { closeOf, opened, openWs } from '../helpers/ws.js';
import { clearConnect } from '../helpers/scenario.js';

const DRAIN_MS = 20_000;
/** Long enough for the checks made within it on a loaded machine (two cores, other tests). */
const UNREADY_MS = 3000;

async function aliceTicket(node: ClusterNode): Promise<string> {
  const login = await node.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
  const r = await node.api<{ ticket: string }>('POST', '/api/desktops/desk/tickets', { token: login.body.token, body: { protocol: 'vnc' } });
  if (r.status !== 200) throw new Error(`ticket at ${node.id}: ${r.status}`);
  return r.body.ticket;
}

async function wsEcho(t: Test, cluster: TestCluster, node: ClusterNode): Promise<import('ws').WebSocket> {
  const ws = openWs(t, { port: node.port, caCert: cluster.ca.cert }, `/tunnel/desk/vnc?ticket=${await aliceTicket(node)}`);
  await opened(ws, 20_000);
  const echoed = new Promise<string>((resolve) => ws.once('message', (d: Buffer) => resolve(d.toString())));
  ws.send(Buffer.from('hello'));
  t.equal(await Promise.race([echoed, deadline(5000, 'ws echo')]), 'hello', `a WebSocket tunnel through ${node.id} works`);
  return ws;
}

async function bothUp(nodes: readonly ClusterNode[], token: string, count: number): Promise<void> {
  for (const n of nodes) {
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token });
      return view.body.nodes.filter((x) => x.state === 'up').length >= count ? true : undefined;
    }, 15_000, `${count} nodes up on ${n.id}`);
  }
}

t.test('drain: unready first, VM moved to its replica, clients sent to another node, exit before drainMs', async (t) => {
  const echo = await startBackend(t);
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { shutdown: { drainMs: DRAIN_MS, unreadyMs: UNREADY_MS } });
  const n1 = await cluster.start('na');
  const n2 = await cluster.start('nb');
  const leader = await electedLeader([n1, n2]);
  // The drained node follows: its VM moves through the leader over node TLS (the longer path).
  const nb = leader;
  const na = leader === n1 ? n2 : n1;
  const token = await adminToken(leader);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const put = await leader.api('PUT', '/api/vms/desk', { token, body: { node: na.id, replica: nb.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], users: ['alice'] } });
  t.equal(put.status, 200, 'VM desk on the follower, replica the leader');
  await bothUp([na, nb], token, 2);
  for (const n of [na, nb]) await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/desk', { token })).body.node === na.id ? true : undefined), 5000, `desk seen on ${n.id}`);

  const ws = await wsEcho(t, cluster, na);
  const wsClosed = closeOf(ws, 15_000);
  const connect = await rawRequest(na.port, clearConnect(await aliceTicket(na)), { ca: cluster.ca.cert });
  t.equal(connect.status, 200, 'a CONNECT tunnel through na');
  t.same(await echoRoundTrip(connect.socket, Buffer.from('ping')), Buffer.from('ping'));
  const connectClosed = closedWithin(connect.socket, 15_000);

  // Ready before the drain, so the checks within unreadyMs are quick.
  const lateTicket = await aliceTicket(nb);
  // Asked at nb: the command reaches na.
  const admin = await nb.admin();
  const started = Date.now();
  const answer = await admin.drainNode(na.id, true);
  await admin.close();
  t.match(answer, { node: na.id, started: true, moveVms: true }, 'nb passed the drain on to na');
  t.ok(answer.tunnels >= 2, `na had ${answer.tunnels} tunnels to hand over`);

  // Within unreadyMs: unready at once, but a new tunnel that still arrives (the balancer has not
  // looked yet) is served, and handed over with the others.
  const ready = await na.api<{ status: string }>('GET', '/readyz');
  t.equal(ready.status, 503, 'readyz answers 503 at once');
  t.equal(ready.body.status, 'shutting-down');
  const late = await rawRequest(na.port, clearConnect(lateTicket), { ca: cluster.ca.cert });
  t.equal(late.status, 200, 'a new tunnel within unreadyMs is still served, not refused');
  const lateClosed = closedWithin(late.socket, 15_000);

  const close = await wsClosed;
  t.equal(close.code, 4001, 'the WebSocket client is told to reconnect');
  const reason = JSON.parse(close.reason) as { node?: string; retryMs?: number };
  t.equal(reason.node, nb.id, 'naming the node that now owns the VM');
  t.type(reason.retryMs, 'number');
  const closedAt = Date.now() - started;
  t.ok(closedAt >= UNREADY_MS - 200, `clients are told only after unreadyMs (${closedAt} ms)`);
  await connectClosed;
  t.pass('the CONNECT tunnel is closed (the client reconnects through the balancer)');
  await lateClosed;
  t.pass('so is the one opened within unreadyMs');

  await eventually(async () => ((await nb.api<{ node?: string }>('GET', '/api/vms/desk', { token })).body.node === nb.id ? true : undefined), 5000, 'desk moved to nb');
  const code = await Promise.race([na.exited(), deadline(10_000, 'na exiting')]);
  t.equal(code, 0, 'na exits 0');
  t.ok(Date.now() - started < DRAIN_MS / 2, `well before drainMs (${Date.now() - started} ms)`);
  t.ok(na.logs.some((l) => l.event === 'drain-vm-moved' && l.vm === 'desk' && l.node === nb.id), 'the move is logged');
  t.ok(na.logs.some((l) => l.event === 'drain-done' && l.left === 0), 'drain-done with no tunnel left');

  // The client comes back at nb and reaches the console there.
  await wsEcho(t, cluster, nb);
});

t.test('SIGTERM drains: the WebSocket client is sent to the other up node; the process exits once its tunnels are gone', async (t) => {
  const echo = await startBackend(t);
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { shutdown: { drainMs: DRAIN_MS } });
  const na = await cluster.start('na');
  const nb = await cluster.start('nb');
  const leader = await electedLeader([na, nb]);
  const token = await adminToken(leader);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  // The console runs on nb's host; the client enters at na.
  await leader.api('PUT', '/api/vms/desk', { token, body: { node: 'nb', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], users: ['alice'] } });
  await bothUp([na, nb], token, 2);
  await eventually(async () => ((await na.api<{ node?: string }>('GET', '/api/vms/desk', { token })).body.node === 'nb' ? true : undefined), 5000, 'desk seen on na');
  const ws = await wsEcho(t, cluster, na);
  const wsClosed = closeOf(ws, 15_000);
  const started = Date.now();
  na.kill('SIGTERM');
  const close = await wsClosed;
  t.equal(close.code, 4001, 'told to reconnect, not 1001');
  t.equal((JSON.parse(close.reason) as { node?: string }).node, 'nb', 'at the other up node');
  t.equal(await Promise.race([na.exited(), deadline(10_000, 'na exiting')]), 0, 'exits 0');
  t.ok(Date.now() - started < DRAIN_MS / 2, `once its tunnels are gone, not at drainMs (${Date.now() - started} ms)`);
  await wsEcho(t, cluster, nb);
});
