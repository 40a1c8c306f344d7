/**
 * Transparent resume (oneport.v1) with the browser channel itself (web/oneport-channel.js, given
 * the `ws` WebSocket): a known byte stream each way while the client leg is cut mid-transfer,
 * several times; afterwards the bytes received equal the bytes sent, in order, none doubled, and
 * the console saw one connection only. Plus what is refused: another user's session, an offset
 * that cannot be replayed, a session whose grace period passed or whose console died (4001:
 * reconnect fresh).
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { WebSocket } from 'ws';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { freePort, rawRequest } from '../helpers/net.js';
import { until } from '../helpers/wait.js';
import { fixedPortConsole, type FixedConsole } from '../helpers/console.js';
// The browser library, run as is.
import { OneportChannel } from '../../web/oneport-channel.js';

/** Session state lives in the gateway's registry, which has no event to await: polled, closely. */
const POLL = { timeoutMs: 15_000, intervalMs: 10 };

const MiB = 1024 * 1024;

/** Deterministic bytes: byte i of a stream is a function of i (and a seed per direction). */
function pattern(seed: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) b[i] = ((offset + i) * 131 + seed + ((offset + i) >>> 11)) & 0xff;
  return b;
}

interface Console extends FixedConsole {
  received: () => Buffer[];
}

/** A console that sends `total` pattern bytes in 16 KiB writes and keeps what it receives. */
async function streamingConsole(t: Test, port: number, total: number): Promise<Console> {
  const received: Buffer[] = [];
  const c = await fixedPortConsole(t, port, (s) => {
    s.on('data', (d: Buffer) => received.push(d));
    let offset = 0;
    const pump = (): void => {
      while (offset < total) {
        const n = Math.min(16 * 1024, total - offset);
        const ok = s.write(pattern(1, offset, n));
        offset += n;
        if (!ok) {
          s.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
  return { ...c, received: () => received };
}

async function setup(t: Test, total: number, config: Record<string, unknown> = {}): Promise<{ gw: TestGateway; console: Console }> {
  const gw = await startTestGateway(t, config);
  const port = await freePort();
  const c = await streamingConsole(t, port, total);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port }], ['alice', 'bob']);
  return { gw, console: c };
}

function channel(t: Test, gw: TestGateway, ticket: string, resume: string, onStatus?: (s: { state: string }) => void): OneportChannel {
  const ch = new OneportChannel(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, {
    resume,
    WebSocket: WebSocket as never,
    wsOptions: { ca: gw.caCert },
    onStatus,
    ackBytes: 256 * 1024,
  });
  t.teardown(() => ch.close());
  return ch;
}

/** Cut the client leg as a network would: the socket goes, no close frame. */
function cut(ch: OneportChannel): void {
  (ch.leg as unknown as { _socket?: net.Socket } | undefined)?._socket?.destroy();
}

t.test('client leg cut mid-transfer, three times: every byte arrives once, in order, both ways; one console connection', async (t) => {
  const total = 8 * MiB;
  const { gw, console: c } = await setup(t, total);
  const { ticket, resume } = await gw.ticket('alice', 'desk');
  const states: string[] = [];
  const ch = channel(t, gw, ticket, resume, (s) => states.push(s.state));
  const got: Buffer[] = [];
  let gotBytes = 0;
  const cutsAt = [total / 8, total / 3, (2 * total) / 3];
  const upTotal = 2 * MiB;
  let uploaded = 0;
  let nextCut = 0;
  const done = new Promise<void>((resolve) => {
    ch.onmessage = (ev: { data: ArrayBuffer }) => {
      const b = Buffer.from(ev.data);
      got.push(b);
      gotBytes += b.length;
      // Upload as the download goes: a quarter of the pace, so it spans every cut.
      while (ch.readyState === 1 && uploaded < upTotal && uploaded < gotBytes / 4) {
        ch.send(pattern(7, uploaded, 8192));
        uploaded += 8192;
      }
      if (nextCut < cutsAt.length && gotBytes >= cutsAt[nextCut]!) {
        nextCut++;
        cut(ch);
      }
      if (gotBytes >= total) resolve();
    };
  });
  await new Promise<void>((resolve) => (ch.onopen = () => resolve()));
  await done;
  t.equal(uploaded, upTotal, 'the upload ran alongside the download, across the cuts');
  const all = Buffer.concat(got);
  t.equal(all.length, total, 'exactly the bytes the console sent, none doubled');
  t.equal(sha(all), sha(pattern(1, 0, total)), 'in order, none lost');
  await until(() => c.received().reduce((n, b) => n + b.length, 0) >= upTotal, { what: 'console got the upload', ...POLL });
  const up = Buffer.concat(c.received());
  t.equal(up.length, upTotal, 'the console got exactly what the client sent');
  t.equal(sha(up), sha(pattern(7, 0, upTotal)), 'in order');
  t.equal(c.accepted(), 1, 'the console saw one connection only');
  t.ok(states.filter((s) => s === 'resumed').length >= 3, `the channel resumed after each cut (${states.join(',')})`);
  const resumed = gw.logs.filter((l) => l.event === 'session-resumed');
  t.ok(resumed.length >= 3, `the gateway logged ${resumed.length} resumes`);
  ch.close();
  await until(() => gw.ctx.sessions.size === 0, { what: 'a clean close ends the session', ...POLL });
});

t.test('the gateway serves the channel to browsers', async (t) => {
  const gw = await startTestGateway(t);
  const res = await rawRequest(gw.port, 'GET /oneport-channel.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', { ca: gw.caCert });
  t.match(res.head, /^HTTP\/1\.1 200/);
  t.match(res.head, /content-type: (text|application)\/javascript/i);
});

t.test('resume refusals: another user, a bad offset, after the grace period, after the console died', async (t) => {
  const { gw, console: c } = await setup(t, 64 * 1024, { tunnel: { resume: { graceMs: 800 } } });
  const a = await gw.ticket('alice', 'desk');
  const ch = channel(t, gw, a.ticket, a.resume);
  await new Promise<void>((resolve) => (ch.onopen = () => resolve()));
  const session = ch.session!;
  // Park it: cut the leg and stop the channel from resuming by itself.
  ch.resume = () => undefined;
  cut(ch);
  await until(() => gw.ctx.sessions.get(session)?.parked === true, { what: 'parked', ...POLL });

  const b = await gw.ticket('bob', 'desk');
  t.equal(await attempt(gw, b.resume, session, 0), 4401, "bob's resume token on alice's session: 4401");
  t.equal(await attempt(gw, a.resume, session, 10 * MiB), 4401, 'an offset past what was sent: 4401');
  t.equal(await attempt(gw, 'v1.bad.token', session, 0), 4401, 'a bad token: 4401');
  t.equal(await attempt(gw, a.resume, 'no-such-session', 0), 4001, 'an unknown session: 4001, reconnect fresh');
  await until(() => gw.ctx.sessions.get(session) === undefined, { what: 'the grace period ends the session', ...POLL, timeoutMs: 5000 });
  t.equal(await attempt(gw, a.resume, session, 0), 4001, 'after the grace period: 4001');
  t.equal(c.accepted(), 1);

  // A console that dies while its session is parked takes the session with it.
  const a2 = await gw.ticket('alice', 'desk');
  const ch2 = channel(t, gw, a2.ticket, a2.resume);
  await new Promise<void>((resolve) => (ch2.onopen = () => resolve()));
  const s2 = ch2.session!;
  ch2.resume = () => undefined;
  cut(ch2);
  await until(() => gw.ctx.sessions.get(s2)?.parked === true, { what: 'parked', ...POLL });
  c.kill();
  await until(() => gw.ctx.sessions.get(s2) === undefined, { what: 'console death ends the session', ...POLL });
  t.equal(await attempt(gw, a2.resume, s2, 0), 4001, 'resume after the console died: 4001');
});

async function attempt(gw: TestGateway, resume: string, session: string, received: number): Promise<number> {
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?resume=${encodeURIComponent(resume)}&session=${encodeURIComponent(session)}&received=${received}`, ['oneport.v1'], { ca: gw.caCert });
  ws.on('error', () => {});
  const [code] = (await once(ws, 'close')) as [number];
  return code;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
