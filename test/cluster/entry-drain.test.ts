/**
 * A `oneport.v1` session survives its entry node's drain (issue 15 point 1; DECISIONS 2026-12-03:
 * "when only the entry node goes away, the session must survive"), with real processes on a real
 * redis-server: three nodes, the VM owned by B, the client entering at A with bytes flowing both
 * ways. A is drained (SIGTERM); its client is told 4001 `{"resume":true}` and resumes through C
 * (a balancer's choice); the session, held at B next to the console, carries on: every byte
 * arrives once, in order, both ways (SHA-256 of everything sent and received), and the console
 * saw one TCP connection for the whole time.
 * And the other way round: when the node holding a relayed session (the owner) dies or hangs, the
 * relay does not sit on a dead connection: the client is told 4001 (reconnect fresh), at once
 * after a SIGKILL (the holder's port no longer answers), within 1 s of the failover after SIGSTOP.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import { OneportChannel } from '../../web/oneport-channel.js';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, logTime, seenEverywhere, type ClusterNode } from '../helpers/cluster.js';
import { deadline } from '../helpers/wait.js';

/** Bytes each side sends: enough that the drain lands mid-stream. */
const TOTAL = 4 * 1024 * 1024;
const CHUNK = 32 * 1024;
/** Pace of each sender (one chunk per tick), so that data is moving when the drain comes. */
const TICK_MS = 10;

/** A console that counts its connections and, on each, sends TOTAL random bytes while hashing both directions. */
async function hashingConsole(t: Test): Promise<{ port: number; accepted: () => number; closed: () => number; sent: ReturnType<typeof createHash>; got: ReturnType<typeof createHash>; bytesIn: () => number; bytesOut: () => number }> {
  let accepted = 0;
  let closed = 0;
  let bytesIn = 0;
  let bytesOut = 0;
  const sent = createHash('sha256');
  const got = createHash('sha256');
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    accepted++;
    s.on('close', () => closed++);
    s.on('data', (d: Buffer) => {
      bytesIn += d.length;
      got.update(d);
    });
    const pump = (): void => {
      if (s.destroyed || bytesOut >= TOTAL) return;
      const chunk = randomBytes(Math.min(CHUNK, TOTAL - bytesOut));
      bytesOut += chunk.length;
      sent.update(chunk);
      if (s.write(chunk)) setTimeout(pump, TICK_MS);
      else s.once('drain', () => setTimeout(pump, TICK_MS));
    };
    pump();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as net.AddressInfo).port, accepted: () => accepted, closed: () => closed, sent, got, bytesIn: () => bytesIn, bytesOut: () => bytesOut };
}

t.test('the entry node drains: the oneport.v1 session resumes through another node, no byte lost either way, one console connection', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { shutdown: { drainMs: 20_000, unreadyMs: 300 } });
  const nodes = await Promise.all(['e1', 'e2', 'e3'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  // A (entry) and B (owner) follow; C leads: the drained node is not the leader (one thing at a time).
  const [a, b] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
  const c = leader;
  const token = await adminToken(leader);
  const console = await hashingConsole(t);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const put = await leader.api('PUT', '/api/vms/desk', { token, body: { node: b.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: console.port }], users: ['alice'] } });
  t.equal(put.status, 200, `VM desk owned by ${b.id}`);
  await seenEverywhere(nodes, token, 'desk', b.id);
  const alice = (await a.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const tk = await a.api<{ ticket: string; resume: string }>('POST', '/api/desktops/desk/tickets', { token: alice, body: { protocol: 'vnc' } });
  t.equal(tk.status, 200);

  const states: string[] = [];
  const ch = new OneportChannel(`wss://127.0.0.1:${a.port}/tunnel/desk/vnc?ticket=${tk.body.ticket}`, {
    resume: tk.body.resume,
    WebSocket: WebSocket as never,
    wsOptions: { ca: cluster.ca.cert },
    onStatus: (st) => states.push(st.state),
    // The balancer: whichever node the drained one names, the client lands on C.
    route: () => `wss://127.0.0.1:${c.port}/tunnel/desk/vnc`,
  });
  t.teardown(() => ch.close());
  const clientGot = createHash('sha256');
  const clientSent = createHash('sha256');
  let received = 0;
  let sentBytes = 0;
  const progress: Array<() => void> = [];
  ch.onmessage = (ev) => {
    const b = Buffer.from(ev.data);
    received += b.length;
    clientGot.update(b);
    for (const w of progress.splice(0)) w();
  };
  const until = async (cond: () => boolean, what: string, ms = 60_000): Promise<void> => {
    const check = (async () => {
      while (!cond()) await new Promise<void>((r) => (progress.push(r), setTimeout(r, 50)));
    })();
    await Promise.race([check, deadline(ms, what)]);
  };
  await Promise.race([new Promise<void>((r) => (ch.onopen = () => r())), deadline(30_000, 'channel open')]);
  const firstLeg = ch.leg as WebSocket;
  const toldAtDrain = new Promise<{ code: number; reason: string }>((r) => firstLeg.on('close', (code: number, reason: Buffer) => r({ code, reason: reason.toString() })));
  const sender = (async () => {
    while (sentBytes < TOTAL) {
      const chunk = randomBytes(Math.min(CHUNK, TOTAL - sentBytes));
      sentBytes += chunk.length;
      clientSent.update(chunk);
      ch.send(chunk);
      await new Promise((r) => setTimeout(r, TICK_MS));
    }
  })();

  await a.waitFor((l) => l.event === 'session-relayed' && l.holder === b.id, 10_000);
  t.pass(`A relays the new session to the VM owner ${b.id}`);
  await until(() => received >= TOTAL / 4 && console.bytesIn() >= TOTAL / 4, 'a quarter of the bytes each way before the drain');
  const at = { received, consoleIn: console.bytesIn() };
  const markC = c.logs.length;
  a.kill('SIGTERM');
  const told = await Promise.race([toldAtDrain, deadline(15_000, 'A telling its client')]);
  t.equal(told.code, 4001, 'the drained entry node says 4001');
  const reason = JSON.parse(told.reason) as { resume?: boolean; node?: string; retryMs?: number };
  t.equal(reason.resume, true, 'with resume: the session is kept');
  t.equal(reason.node, b.id, 'naming the node holding the session (the VM owner)');
  t.comment(`drained with ${at.received} bytes received by the client, ${at.consoleIn} by the console`);

  await sender;
  await until(() => received >= TOTAL && console.bytesIn() >= TOTAL, 'every byte both ways', 90_000);
  t.ok(states.includes('resuming') && states.includes('resumed'), `the channel resumed (${states.join(',')})`);
  const relayed = await c.waitFor((l) => l.event === 'session-relayed' && l.holder === b.id, 10_000, { after: markC });
  t.equal(relayed.vm, 'desk', 'the leg came back through C, relayed to B');
  t.ok(b.logs.some((l) => l.event === 'session-resumed' && l.vm === 'desk'), 'B attached it to the parked session');
  t.equal(received, TOTAL, 'the client got every console byte once');
  t.equal(console.bytesIn(), TOTAL, 'the console got every client byte once');
  t.equal(clientGot.digest('hex'), console.sent.digest('hex'), 'console -> client: SHA-256 equal');
  t.equal(console.got.digest('hex'), clientSent.digest('hex'), 'client -> console: SHA-256 equal');
  t.equal(console.accepted(), 1, 'the console saw one TCP connection');
  t.equal(console.closed(), 0, 'and it was never closed');
  t.equal(await Promise.race([a.exited(), deadline(20_000, 'A exiting')]), 0, 'A exited 0 once its relays were gone');
  t.ok(a.logs.some((l) => l.event === 'drain-done' && l.left === 0), 'drain-done with nothing left');
});

for (const how of ['SIGKILL', 'SIGSTOP'] as const) {
  t.test(`the owner holding a relayed oneport.v1 session gets ${how}: the client is told 4001 (reconnect fresh), not left on a dead relay`, async (t) => {
    const redis = await startRedis(t);
    const cluster = makeCluster(t, redis.url);
    const nodes = await Promise.all(['o1', 'o2', 'o3'].map((id) => cluster.start(id)));
    const leader = await electedLeader(nodes);
    const [a, b] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
    const token = await adminToken(leader);
    const console = await hashingConsole(t);
    await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
    await leader.api('PUT', '/api/vms/desk', { token, body: { node: b.id, replica: leader.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: console.port }], users: ['alice'] } });
    // An entry node that does not see the owner up yet holds a new session itself (no relay to wait for).
    await seenEverywhere(nodes, token, 'desk', b.id);
    const alice = (await a.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
    const tk = await a.api<{ ticket: string }>('POST', '/api/desktops/desk/tickets', { token: alice, body: { protocol: 'vnc' } });
    const ws = new WebSocket(`wss://127.0.0.1:${a.port}/tunnel/desk/vnc?ticket=${tk.body.ticket}`, ['oneport.v1'], { ca: cluster.ca.cert });
    ws.on('error', () => undefined);
    t.teardown(() => ws.terminate());
    const closed = new Promise<{ code: number; reason: string; at: number }>((r) => ws.once('close', (code: number, reason: Buffer) => r({ code, reason: reason.toString(), at: Date.now() })));
    const hello = await Promise.race([new Promise<string>((r) => ws.once('message', (d: Buffer) => r(d.toString()))), deadline(30_000, 'hello')]);
    t.match(JSON.parse(hello) as object, { type: 'hello' }, 'the session is open');
    await a.waitFor((l) => l.event === 'session-relayed' && l.holder === b.id, 10_000);
    const mark = leader.logs.length;
    b.kill(how);
    t.teardown(() => b.kill('SIGKILL'));
    const end = await Promise.race([closed, deadline(20_000, 'the client told')]);
    t.equal(end.code, 4001, `told 4001 after ${how}`);
    t.notOk((JSON.parse(end.reason) as { resume?: boolean }).resume, 'without resume: the session went with its holder (reconnect fresh)');
    if (how === 'SIGSTOP') {
      const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'desk', 20_000, { after: mark });
      t.ok(end.at - logTime(moved) <= 1000, `within 1 s of the failover (${end.at - logTime(moved)} ms)`);
    }
    const line = await a.waitFor((l) => l.event === 'relay-closed' && l.vm === 'desk', 10_000);
    t.equal(line.end, how === 'SIGKILL' ? 'holder-gone' : 'rerouted', `A logs how the relay ended (${String(line.end)})`);
  });
}
