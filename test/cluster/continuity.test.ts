/**
 * Sessions follow their VM across nodes, with real processes: a browser-like WebSocket client
 * entering at node A, its VM on node B with a replica on node C.
 * - B hangs (SIGSTOP: no FIN, no RST, like a host that lost power): the cluster fails B over and
 *   the client is told to reroute (4001) within 1 s of the directory change, not after a TCP
 *   timeout; it reconnects with its resume token, no login, is held while the VM recovers, and
 *   reaches the console on C.
 * - B is killed (SIGKILL): the client is told at once, and comes back the same way.
 * - A planned `vm move` mid-session: the old session is ended cleanly (4001) and the client lands
 *   on the new owner.
 * - A `oneport.v1` session is held at the VM's owner (the entry node relays it), so a leg cut at
 *   the entry node resumes through any other node, relayed to the owner.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { OneportChannel } from '../../web/oneport-channel.js';
import { startRedis } from '../helpers/redis.js';
import { freePort } from '../helpers/net.js';
import { makeCluster, electedLeader, adminToken, logTime, seenEverywhere, type ClusterNode, type TestCluster } from '../helpers/cluster.js';
import { opened, openWs } from '../helpers/ws.js';
import { fixedPortConsole, type FixedConsole } from '../helpers/console.js';

const CLI = fileURLToPath(new URL('../../gateway/cli.ts', import.meta.url));
const BANNER = 'RFB 003.008\n';

/** A VNC-like console: greets, then echoes; tells which "host" it runs on. */
function consoleOn(t: Test, port: number, host: string): Promise<FixedConsole> {
  return fixedPortConsole(t, port, (s) => {
    s.write(BANNER);
    s.on('data', (d: Buffer) => s.write(`${host}:${d.toString()}`));
  });
}

interface Client {
  ws: WebSocket;
  closed: Promise<{ code: number; reason: string; at: number }>;
  say(text: string): Promise<string>;
}

async function openClient(t: Test, cluster: TestCluster, node: ClusterNode, query: string): Promise<Client> {
  const ws = openWs(t, { port: node.port, caCert: cluster.ca.cert }, `/tunnel/desk/vnc?${query}`);
  const messages: string[] = [];
  const waiters: Array<() => void> = [];
  ws.on('message', (d: Buffer) => {
    messages.push(d.toString());
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<{ code: number; reason: string; at: number }>((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString(), at: Date.now() })));
  // Generous: three gateway processes share two cores here.
  await opened(ws, 30_000);
  const next = async (pred: (all: string) => boolean): Promise<string> => {
    while (!pred(messages.join(''))) await new Promise<void>((r) => waiters.push(r));
    return messages.join('');
  };
  await next((all) => all.startsWith(BANNER));
  return {
    ws,
    closed,
    async say(text: string) {
      const before = messages.join('').length;
      ws.send(Buffer.from(text));
      const all = await next((a) => a.length > before && a.slice(before).includes(text));
      return all.slice(before);
    },
  };
}

async function prepare(t: Test): Promise<{ cluster: TestCluster; nodes: ClusterNode[]; leader: ClusterNode; owner: ClusterNode; replica: ClusterNode; entry: ClusterNode; token: string; alice: string; port: number }> {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const nodes = await Promise.all(['c1', 'c2', 'c3', 'c4'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const [owner, replica, entry] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode, ClusterNode];
  const token = await adminToken(leader);
  const port = await freePort();
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  await leader.api('PUT', '/api/vms/desk', { token, body: { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['alice'] } });
  // Every node sees the others up too: an entry that does not see the owner up holds a new session itself.
  await seenEverywhere(nodes, token, 'desk', owner.id);
  const alice = (await entry.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  return { cluster, nodes, leader, owner, replica, entry, token, alice, port };
}

async function ticketAndResume(node: ClusterNode, token: string): Promise<{ ticket: string; resume: string }> {
  const r = await node.api<{ ticket: string; resume: string }>('POST', '/api/desktops/desk/tickets', { token, body: { protocol: 'vnc' } });
  return r.body;
}

for (const how of ['SIGSTOP', 'SIGKILL'] as const) {
  t.test(`owner ${how} mid-session: the client is told promptly and resumes on the replica without a login`, async (t) => {
    const { cluster, leader, owner, replica, entry, alice, port } = await prepare(t);
    const onOwner = await consoleOn(t, port, 'B');
    const { ticket, resume } = await ticketAndResume(entry, alice);
    const client = await openClient(t, cluster, entry, `ticket=${ticket}`);
    t.equal(await client.say('one'), 'B:one', 'session open on the owner B');

    const mark = leader.logs.length;
    owner.kill(how);
    t.teardown(() => owner.kill('SIGKILL'));
    // The host is gone: so is its console; the hypervisor will start the VM on the replica.
    await onOwner.close();
    const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'desk', 20_000, { after: mark });
    const changedAt = logTime(moved);
    const closed = await client.closed;
    t.comment(`client told: ${closed.code} ${closed.reason}, ${closed.at - changedAt} ms after the directory change`);
    t.ok(closed.at - changedAt <= 1000, `told within 1 s of the directory change (${closed.at - changedAt} ms)`);
    // Hung (SIGSTOP): the directory change reroutes it. Killed (SIGKILL): its sockets close cleanly
    // at once, and the entry node tells that apart from a console's normal end (the node no longer
    // answers). Either way: reconnect (4001), not "normal end" and not a TCP timeout.
    t.equal(closed.code, 4001, `the client is told to reconnect (4001) after ${how}`);
    t.match(JSON.parse(closed.reason) as object, { retryMs: Number }, 'with retryMs');

    // Reconnect at once with the resume token: held while the VM recovers on C, then through.
    const again = openClient(t, cluster, entry, `resume=${encodeURIComponent(resume)}`);
    await entry.waitFor((l) => l.event === 'tunnel-hold' && l.vm === 'desk', 10_000).catch(() => undefined);
    const onReplica = await consoleOn(t, port, 'C');
    const resumed = await again;
    t.equal(await resumed.say('two'), 'C:two', 'the resumed session reaches the console on the replica C');
    t.ok(onReplica.accepted() >= 1);
    const line = await entry.waitFor((l) => l.event === 'tunnel-held' && l.vm === 'desk', 5_000).catch(() => undefined);
    t.comment(line ? `held ${String(line.ms)} ms before the VM answered on ${String(line.node)}` : 'not held (the VM was already running)');
  });
}

t.test('planned move mid-session: the old session ends cleanly, the client lands on the new owner', async (t) => {
  const { cluster, owner, replica, entry, alice, port } = await prepare(t);
  await consoleOn(t, port, 'X');
  const { ticket, resume } = await ticketAndResume(entry, alice);
  const client = await openClient(t, cluster, entry, `ticket=${ticket}`);
  t.equal(await client.say('before'), 'X:before');
  const marks = { owner: owner.logs.length, replica: replica.logs.length };
  const movedAt = Date.now();
  await new Promise<void>((resolve, reject) =>
    execFile(process.execPath, ['--import', 'tsx', CLI, '--state', entry.state, 'vm', 'move', 'desk', replica.id], (err) => (err ? reject(err) : resolve())),
  );
  const closed = await client.closed;
  t.equal(closed.code, 4001, 'ended on purpose with 4001');
  t.match(JSON.parse(closed.reason) as object, { retryMs: Number, node: replica.id }, 'naming the new owner');
  t.ok(closed.at - movedAt < 5000, `told ${closed.at - movedAt} ms after the move command started`);
  const hopClosed = await owner.waitFor((l) => l.event === 'tunnel' && l.transport === 'hop' && l.vm === 'desk', 5_000, { after: marks.owner });
  t.match(hopClosed.closeReason, /^(client-closed|rerouted)$/, `the old owner's side ended too (${String(hopClosed.closeReason)})`);
  const resumed = await openClient(t, cluster, entry, `resume=${encodeURIComponent(resume)}`);
  t.equal(await resumed.say('after'), 'X:after', 'resumed without a login');
  resumed.ws.close();
  const hop = await replica.waitFor((l) => l.event === 'tunnel' && l.transport === 'hop' && l.vm === 'desk', 5_000, { after: marks.replica });
  t.equal(hop.consoleNode, replica.id, 'the new session went through the new owner');
});

t.test('transparent resume across nodes: the session is held at the VM owner B; a leg cut at node A comes back through node D and is relayed to B', async (t) => {
  const { cluster, nodes, owner, entry, alice, port } = await prepare(t);
  await consoleOn(t, port, 'X');
  const other = nodes.find((n) => n !== entry && n !== owner)!;
  const { ticket, resume } = await ticketAndResume(entry, alice);
  const states: string[] = [];
  const ch = new OneportChannel(`wss://127.0.0.1:${entry.port}/tunnel/desk/vnc?ticket=${ticket}`, {
    resume,
    WebSocket: WebSocket as never,
    wsOptions: { ca: cluster.ca.cert },
    onStatus: (st) => states.push(st.state),
  });
  t.teardown(() => ch.close());
  let text = '';
  const waiters: Array<() => void> = [];
  ch.onmessage = (ev) => {
    text += Buffer.from(ev.data).toString();
    for (const w of waiters.splice(0)) w();
  };
  const until = async (want: string): Promise<void> => {
    while (!text.includes(want)) await new Promise<void>((r) => waiters.push(r));
  };
  await new Promise<void>((r) => (ch.onopen = () => r()));
  ch.send(Buffer.from('first'));
  await until('X:first');
  const mark = other.logs.length;
  // The client's next leg lands on another node (a load balancer's choice), then the cut.
  (ch as unknown as { url: string }).url = `wss://127.0.0.1:${other.port}/tunnel/desk/vnc`;
  (ch.leg as { _socket?: net.Socket })._socket?.destroy();
  ch.send(Buffer.from('second'));
  await until('X:second');
  t.ok(states.includes('resumed'), `resumed (${states.join(',')})`);
  const relayed = await other.waitFor((l) => l.event === 'session-relayed' && l.holder === owner.id, 10_000, { after: mark });
  t.equal(relayed.vm, 'desk', 'node D relayed the leg to the node holding the session, the VM owner');
  await owner.waitFor((l) => l.event === 'session-resumed' && l.vm === 'desk', 10_000);
  t.ok(entry.logs.some((l) => l.event === 'session-relayed' && l.holder === owner.id), 'the entry node A relayed the new session to the owner too');
  t.equal(text, `${BANNER}X:firstX:second`, 'the stream carried on: nothing lost or doubled');
});
