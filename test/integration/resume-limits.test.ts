/**
 * Bounded memory for resumable (`oneport.v1`) sessions, security issue 2: a client that
 * acknowledges but never reads, against a console that streams as fast as it can, must not grow
 * the gateway. The session sends with backpressure (the console pauses while more than 1 MiB is
 * in flight on the leg) and takes acks only up to what was flushed to the client's socket.
 *
 * And the caps across sessions (config tunnel.resume): sessions per user, parked per user, parked
 * on the node, replay bytes on the node, and parked sessions counted against the per-address
 * connection limit of the address that parked them.
 */
import t, { type Test } from 'tap';
import type net from 'node:net';
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { Agent, request } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startStreamer } from '../helpers/scenario.js';
import { type Backend, startBackend } from '../helpers/net.js';
import { until } from '../helpers/wait.js';
import type { ConfigInput } from '../../gateway/config.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A gateway with users alice and bob, and VM "desk" for both on `console` (default: a streamer). */
async function setup(t: Test, config: ConfigInput = {}, console?: Backend): Promise<{ gw: TestGateway; streamer: Backend }> {
  const gw = await startTestGateway(t, config);
  const streamer = console ?? (await startStreamer(t));
  await gw.addUser('alice', 'alice-password-1');
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: streamer.port }], ['alice', 'bob']);
  return { gw, streamer };
}

/** A console that sends nothing by itself: the test writes on its side of each connection. */
function quietConsole(t: Test): Promise<Backend> {
  return startBackend(t, () => {});
}

interface Leg {
  ws: WebSocket;
  hello: { session: string; received: number };
  resume: string;
}

function connect(t: Test, gw: TestGateway, query: string, opts: { localAddress?: string } = {}): WebSocket {
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?${query}`, ['oneport.v1'], { ca: gw.caCert, ...opts });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  return ws;
}

/** A oneport.v1 leg; resolves with the socket and the hello once it came. */
async function openSession(t: Test, gw: TestGateway, opts: { localAddress?: string; user?: string } = {}): Promise<Leg> {
  const { ticket, resume } = await gw.ticket(opts.user ?? 'alice', 'desk');
  const ws = connect(t, gw, `ticket=${ticket}`, opts);
  const hello = await new Promise<{ session: string; received: number }>((resolve, reject) => {
    ws.on('message', function first(d: Buffer, isBinary: boolean) {
      if (isBinary) return;
      ws.removeListener('message', first);
      resolve(JSON.parse(d.toString()) as { session: string; received: number });
    });
    ws.once('close', (code: number) => reject(new Error(`closed ${code} before the hello`)));
  });
  return { ws, hello, resume };
}

/** A new session that is refused: the close code and reason. */
async function refusedSession(t: Test, gw: TestGateway, opts: { localAddress?: string; user?: string } = {}): Promise<{ code: number; reason: string }> {
  const { ticket } = await gw.ticket(opts.user ?? 'alice', 'desk');
  const ws = connect(t, gw, `ticket=${ticket}`, opts);
  let hello = false;
  ws.on('message', () => (hello = true));
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer];
  if (hello) throw new Error('the session was opened');
  return { code, reason: reason.toString() };
}

/** Cut the leg as a network would (no close frame): the session parks. */
async function park(gw: TestGateway, leg: Leg): Promise<void> {
  (leg.ws as unknown as { _socket: net.Socket })._socket.destroy();
  await until(() => gw.ctx.sessions.get(leg.hello.session)?.parked !== false);
}

/** Try to resume `leg`'s session: resolves with the close code, or 0 when it resumed (hello). */
async function tryResume(t: Test, gw: TestGateway, leg: Leg, opts: { localAddress?: string } = {}): Promise<{ code: number; ws: WebSocket }> {
  const ws = connect(t, gw, `resume=${encodeURIComponent(leg.resume)}&session=${leg.hello.session}&received=0`, opts);
  return new Promise((resolve) => {
    ws.on('message', (d: Buffer, isBinary: boolean) => {
      if (!isBinary && JSON.parse(d.toString()).type === 'hello') resolve({ code: 0, ws });
    });
    ws.once('close', (code: number) => resolve({ code, ws }));
  });
}

async function capCount(gw: TestGateway, cap: string, action: string): Promise<number> {
  const m = await gw.ctx.metrics.sessionCaps.get();
  return m.values.find((v) => v.labels.cap === cap && v.labels.action === action)?.value ?? 0;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('a client that acks everything and never reads: the session stays bounded (replay, in flight, what the console got out, RSS)', async (t) => {
  const maxBufferBytes = 2 * MiB;
  const { gw, streamer } = await setup(t, { tunnel: { resume: { maxBufferBytes } } });
  const consoleSide = streamer.nextConnection();
  const { ws, hello } = await openSession(t, gw);
  // Stop reading: the kernel's receive buffer fills and stays full.
  const raw = (ws as unknown as { _socket: net.Socket })._socket;
  raw.pause();
  const console = await consoleSide;
  const session = gw.ctx.sessions.get(hello.session);
  t.ok(session, 'the session is registered');
  if (!session) return;

  // The attacker owns the VM too, so it knows how many bytes its console wrote: it acknowledges
  // a ladder up to that count (acks are taken in order, each one the gateway accepts trims the
  // replay), and one far beyond it, every 20 ms.
  const ackAll = (): void => {
    const top = console.bytesWritten;
    for (let k = 64; k >= 0; k--) {
      const n = top - k * 256 * KiB;
      if (n > 0) ws.send(JSON.stringify({ type: 'ack', received: n }));
    }
    ws.send(JSON.stringify({ type: 'ack', received: Number.MAX_SAFE_INTEGER }));
  };
  const rssBefore = process.memoryUsage().rss;
  let maxBuffered = 0;
  let maxInFlight = 0;
  let maxRss = rssBefore;
  const started = Date.now();
  // Four seconds, or until the console got out far more than any bound (the old code got there).
  while (Date.now() - started < 4000 && console.bytesWritten < 512 * MiB) {
    ackAll();
    await sleep(20);
    maxBuffered = Math.max(maxBuffered, session.buffered);
    maxInFlight = Math.max(maxInFlight, session.inFlightBytes ?? Number.POSITIVE_INFINITY);
    maxRss = Math.max(maxRss, process.memoryUsage().rss);
  }
  const consoleOut = console.bytesWritten;
  t.comment(`over ${Date.now() - started} ms: the console wrote ${(consoleOut / MiB).toFixed(1)} MiB; replay at most ${(maxBuffered / MiB).toFixed(2)} MiB, in flight at most ${(maxInFlight / MiB).toFixed(2)} MiB, RSS +${((maxRss - rssBefore) / MiB).toFixed(0)} MiB`);
  // One console read (64 KiB) may land after the bound is reached and before the console pauses.
  t.ok(maxBuffered <= maxBufferBytes + 64 * KiB, `replay bytes stay within tunnel.resume.maxBufferBytes (${maxBuffered})`);
  t.ok(maxInFlight <= MiB + 64 * KiB, `bytes in flight on the leg stay within 1 MiB (${maxInFlight})`);
  // Whatever the console got out is in the gateway or in kernel buffers on the way (loopback
  // autotuning: a few MiB each way, up to tcp_rmem's maximum); 96 MiB is far above that and far
  // below what an unbounded gateway takes in four seconds.
  t.ok(consoleOut < 96 * MiB, `the console was paused: it got ${(consoleOut / MiB).toFixed(1)} MiB out to a client that read nothing`);
  t.ok(maxRss - rssBefore < 200 * MiB, `RSS grew by less than 200 MiB (${((maxRss - rssBefore) / MiB).toFixed(0)} MiB)`);
  t.ok(gw.ctx.sessions.get(hello.session) === session && !session.isEnded, 'the session is still up (it is slowed down, not dropped)');
});

t.test('maxSessionsPerUser: the next session ends the user\'s oldest parked one, or is refused with 1013 before its console is dialled', async (t) => {
  const { gw, streamer: console } = await setup(t, { tunnel: { resume: { maxSessionsPerUser: 2 } } }, await quietConsole(t));
  const a1 = await openSession(t, gw);
  const a2 = await openSession(t, gw);
  const dialled = console.accepted;
  const refused = await refusedSession(t, gw);
  t.equal(refused.code, 1013, 'a third live session: 1013, try again later');
  t.equal(refused.reason, 'ONEPORT_ERR_RESUME_LIMIT');
  t.equal(console.accepted, dialled, 'its console was never dialled');
  t.ok(await openSession(t, gw, { user: 'bob' }), 'another user is not concerned');

  await park(gw, a1);
  const a3 = await openSession(t, gw);
  t.ok(a3.hello.session, 'with one of them parked, a new session opens');
  await until(() => gw.ctx.sessions.get(a1.hello.session) === undefined);
  t.pass('the parked session gave way');
  t.equal((await tryResume(t, gw, a1)).code, 4001, 'its client coming back is told to reconnect fresh (4001)');
  t.ok(gw.ctx.sessions.get(a2.hello.session), 'the live one is untouched');
  t.equal(await capCount(gw, 'sessions-per-user', 'refused'), 1);
  t.equal(await capCount(gw, 'sessions-per-user', 'ended'), 1);
  const tunnels = await gw.ctx.metrics.tunnels.get();
  t.equal(tunnels.values.find((v) => v.labels.result === 'ONEPORT_ERR_RESUME_LIMIT')?.value, 1, 'the refusal is a tunnel result like any other');
  t.ok(gw.logs.some((l) => l.event === 'session-capped' && l.cap === 'sessions-per-user'), 'logged');
});

t.test('maxParkedPerUser: parking one more ends the user\'s oldest parked session', async (t) => {
  const { gw } = await setup(t, { tunnel: { resume: { maxParkedPerUser: 1 } } }, await quietConsole(t));
  const a1 = await openSession(t, gw);
  const a2 = await openSession(t, gw);
  const b1 = await openSession(t, gw, { user: 'bob' });
  await park(gw, b1);
  await park(gw, a1);
  t.equal(gw.ctx.sessions.parkedCount, 2);
  await park(gw, a2);
  await until(() => gw.ctx.sessions.get(a1.hello.session) === undefined);
  t.equal(gw.ctx.sessions.parkedCount, 2, "alice's second parking ended her first");
  t.ok(gw.ctx.sessions.get(b1.hello.session)?.parked, "bob's stays");
  t.equal((await tryResume(t, gw, a1)).code, 4001);
  const back = await tryResume(t, gw, a2);
  t.equal(back.code, 0, 'the newer one resumes');
  back.ws.close(1000);
  t.equal(await capCount(gw, 'parked-per-user', 'ended'), 1);
});

t.test('maxParked: one more parked session on the node ends the oldest of the user holding the most', async (t) => {
  const { gw } = await setup(t, { tunnel: { resume: { maxParked: 2 } } }, await quietConsole(t));
  const b1 = await openSession(t, gw, { user: 'bob' });
  const a1 = await openSession(t, gw);
  const a2 = await openSession(t, gw);
  await park(gw, b1);
  await park(gw, a1);
  await park(gw, a2);
  await until(() => gw.ctx.sessions.parkedCount === 2);
  t.equal(gw.ctx.sessions.get(a1.hello.session), undefined, "alice held two of three: her oldest ended");
  t.ok(gw.ctx.sessions.get(b1.hello.session)?.parked, "bob's, parked earlier, stays");
  t.ok(gw.ctx.sessions.get(a2.hello.session)?.parked);
  t.equal(await capCount(gw, 'parked', 'ended'), 1);
});

t.test('maxBufferedBytes: parked sessions end (most bytes first), then new sessions get 1013 and live ones keep a 1 MiB window', async (t) => {
  const console = await quietConsole(t);
  const { gw } = await setup(t, { tunnel: { resume: { maxBufferBytes: 2 * MiB, maxBufferedBytes: 2 * MiB } } }, console);
  const sessions = gw.ctx.sessions;
  /** A session and its console's side; the client reads but never acknowledges. */
  const open = async (): Promise<{ leg: Leg; feed: (n: number) => void }> => {
    const side = console.nextConnection();
    const leg = await openSession(t, gw);
    const s = await side;
    return { leg, feed: (n) => s.write(Buffer.alloc(n, 0x42)) };
  };
  const buffered = (leg: Leg): number => sessions.get(leg.hello.session)?.buffered ?? -1;
  const p = await open();
  const q = await open();
  await park(gw, p.leg);
  await park(gw, q.leg);
  p.feed(900 * KiB);
  q.feed(300 * KiB);
  await until(() => buffered(p.leg) === 900 * KiB && buffered(q.leg) === 300 * KiB);
  const l = await open();
  l.feed(1 * MiB);
  await until(() => sessions.get(p.leg.hello.session) === undefined);
  t.pass('over 2 MiB: the parked session with the most bytes (900 KiB) ended');
  await until(() => buffered(l.leg) === MiB);
  t.equal(buffered(q.leg), 300 * KiB, 'the smaller parked one stays while the node is within budget');
  t.equal(sessions.bufferedBytes, MiB + 300 * KiB);

  const m = await open();
  m.feed(3 * MiB);
  await until(() => sessions.get(q.leg.hello.session) === undefined);
  t.pass('over again: the other parked session ended');
  await until(() => sessions.overBudget && sessions.get(m.leg.hello.session)?.buffered !== undefined && buffered(m.leg) > MiB);
  await sleep(300);
  t.ok(buffered(m.leg) <= MiB + 64 * KiB, `with only live sessions left over the budget, the live one that grows keeps about 1 MiB, not its own 2 MiB (${buffered(m.leg)}): its console waits`);
  t.ok(sessions.overBudget);

  const refused = await refusedSession(t, gw);
  t.equal(refused.code, 1013, 'a new session: 1013');
  t.same(JSON.parse(refused.reason), { code: 'ONEPORT_ERR_RESUME_BUSY', retryMs: 5000 }, 'with when to try again');
  const metrics = await fetchMetrics(gw);
  t.match(metrics, new RegExp(`^oneport_session_replay_bytes ${sessions.bufferedBytes}$`, 'm'), 'oneport_session_replay_bytes is the node total');
  t.match(metrics, /^oneport_session_caps_total\{cap="buffered-bytes",action="ended"\} 2$/m);
  t.match(metrics, /^oneport_session_caps_total\{cap="buffered-bytes",action="refused"\} 1$/m);

  // L's client acknowledges what it got: under the budget again, sessions open, M's console resumes.
  const lSession = sessions.get(l.leg.hello.session)!;
  l.leg.ws.send(JSON.stringify({ type: 'ack', received: MiB }));
  await until(() => lSession.buffered === 0);
  m.leg.ws.send(JSON.stringify({ type: 'ack', received: buffered(m.leg) }));
  await until(() => buffered(m.leg) >= 1.5 * MiB, { timeoutMs: 5000 });
  t.pass('the live session that waited carries on');
  t.ok(await openSession(t, gw), 'and a new session opens');
});

async function fetchMetrics(gw: TestGateway): Promise<string> {
  const dispatcher = new Agent({ connect: { ca: gw.caCert, servername: 'localhost' } });
  try {
    const res = await request(`https://127.0.0.1:${gw.port}/metrics`, { dispatcher });
    return await res.body.text();
  } finally {
    await dispatcher.close();
  }
}

t.test('a parked session counts against limits.maxConnectionsPerAddress of the address that parked it', async (t) => {
  const { gw } = await setup(t, { limits: { maxConnectionsPerAddress: 2 } }, await quietConsole(t));
  const from = { localAddress: '127.0.0.2' };
  const a = await openSession(t, gw, from);
  const b = await openSession(t, gw, from);
  await park(gw, a);
  await park(gw, b);
  t.equal(gw.ctx.connections.holding('127.0.0.2'), 2, 'two parked sessions, no socket: the address still holds two');
  const third = await refusedOrOpen(t, gw, from);
  t.equal(third, 'reset', 'a third connection from that address is refused at accept');
  const elsewhere = await openSession(t, gw, { localAddress: '127.0.0.3' });
  t.ok(elsewhere.hello.session, 'another address is not');
  const back = await tryResume(t, gw, a, { localAddress: '127.0.0.3' });
  t.equal(back.code, 0, 'session a resumes from another address');
  t.equal(gw.ctx.connections.holding('127.0.0.2'), 1, 'and no longer holds a count at the old one');
  t.equal(await refusedOrOpen(t, gw, from), 'open', 'so the old address may connect again');
  back.ws.close(1000);
  await until(() => gw.ctx.sessions.get(a.hello.session) === undefined);
  gw.ctx.sessions.get(b.hello.session)?.close('client-closed');
  await until(() => gw.ctx.connections.holding('127.0.0.2') === 0);
  t.pass('a parked session that ends releases its count');
});

/** Open a oneport.v1 leg: 'open' when the hello came, 'reset' when the connection was cut before. */
async function refusedOrOpen(t: Test, gw: TestGateway, opts: { localAddress?: string }): Promise<'open' | 'reset'> {
  try {
    const leg = await openSession(t, gw, opts);
    leg.ws.close(1000);
    return 'open';
  } catch {
    return 'reset';
  }
}

t.test('an ack beyond what was written to the client is clamped to what was, not ignored', async (t) => {
  const console = await quietConsole(t);
  const { gw } = await setup(t, {}, console);
  const side = console.nextConnection();
  const leg = await openSession(t, gw);
  const s = await side;
  const session = gw.ctx.sessions.get(leg.hello.session)!;
  let got = 0;
  leg.ws.on('message', (d: Buffer, isBinary: boolean) => void (isBinary && (got += d.length)));
  s.write(Buffer.alloc(100 * KiB, 1));
  await until(() => got === 100 * KiB);
  t.equal(session.buffered, 100 * KiB, 'kept for replay until acknowledged');
  leg.ws.send(JSON.stringify({ type: 'ack', received: Number.MAX_SAFE_INTEGER }));
  await until(() => session.buffered === 0);
  t.pass('an ack far ahead trims what was written, no more');
  s.write(Buffer.alloc(50 * KiB, 2));
  await until(() => got === 150 * KiB);
  t.equal(session.buffered, 50 * KiB, 'later bytes are kept again');
  leg.ws.send(JSON.stringify({ type: 'ack', received: 1e300 }));
  leg.ws.send(JSON.stringify({ type: 'ack', received: 120 * KiB }));
  await until(() => session.buffered === 30 * KiB);
  t.pass('a non-integer ack is ignored; a partial one trims part');
});
