/**
 * Bounded memory for resumable (`oneport.v1`) sessions, security issue 2: a client that
 * acknowledges but never reads, against a console that streams as fast as it can, must not grow
 * the gateway. The session sends with backpressure (the console pauses while more than 1 MiB is
 * in flight on the leg) and takes acks only up to what was flushed to the client's socket.
 */
import t, { type Test } from 'tap';
import type net from 'node:net';
import { WebSocket } from 'ws';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startStreamer } from '../helpers/scenario.js';
import type { Backend } from '../helpers/net.js';
import type { ConfigInput } from '../../gateway/config.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function setup(t: Test, config: ConfigInput = {}): Promise<{ gw: TestGateway; streamer: Backend }> {
  const gw = await startTestGateway(t, config);
  const streamer = await startStreamer(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: streamer.port }], ['alice']);
  return { gw, streamer };
}

/** A oneport.v1 leg; resolves with the socket and the hello once it came. */
async function openSession(t: Test, gw: TestGateway, opts: { localAddress?: string } = {}): Promise<{ ws: WebSocket; hello: { session: string; received: number } }> {
  const { ticket } = await gw.ticket('alice', 'desk');
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/tunnel/desk/vnc?ticket=${ticket}`, ['oneport.v1'], { ca: gw.caCert, ...opts });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  const hello = await new Promise<{ session: string; received: number }>((resolve, reject) => {
    ws.on('message', function first(d: Buffer, isBinary: boolean) {
      if (isBinary) return;
      ws.removeListener('message', first);
      resolve(JSON.parse(d.toString()) as { session: string; received: number });
    });
    ws.once('close', (code: number) => reject(new Error(`closed ${code} before the hello`)));
  });
  return { ws, hello };
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
