/**
 * Half-closed stream tunnels are bounded (tunnel.halfCloseMs): after one side's FIN the other
 * direction may go on only that long. Before, a console that kept streaming after the client's
 * FIN (or a client that kept sending after the console's) held the tunnel forever: the idle
 * timeout never fires on a busy direction. A half-close that finishes in time loses nothing.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { setupDesk, clearConnect } from '../helpers/scenario.js';
import { readResponse, closedWithin, type RawConnectResult } from '../helpers/net.js';
import { eventually } from '../helpers/wait.js';

/** A console that keeps its side open after the client's FIN, as a real TCP peer may. */
async function halfOpenConsole(t: Test, onSocket: (s: net.Socket) => void): Promise<{ port: number }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    sockets.add(s);
    onSocket(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port };
}

/** A CONNECT from a client that keeps reading after its own FIN (and writing after the other's). */
async function halfOpenClient(port: number, request: string): Promise<RawConnectResult> {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => {});
  await once(s, 'connect');
  s.write(request);
  return readResponse(s);
}

const HALF_CLOSE_MS = 600;

/** A console that, once the client's FIN arrives, streams a chunk every 50 ms and never ends. */
function endlessAfterFin(s: net.Socket): void {
  s.on('error', () => {});
  s.resume();
  s.on('end', () => {
    const timer = setInterval(() => s.write(Buffer.alloc(1024, 0x61)), 50);
    s.on('close', () => clearInterval(timer));
  });
}

t.test('client FIN, console streams on: closed halfCloseMs later, logged as half-closed', async (t) => {
  const { gw } = await setupDesk(t, { tunnel: { halfCloseMs: HALF_CLOSE_MS, idleTimeoutMs: 0 } });
  const console = await halfOpenConsole(t, endlessAfterFin);
  await gw.addVm('stream', [{ protocol: 'vnc', host: '127.0.0.1', port: console.port, publishedPort: 5900 }], ['alice']);
  const r = await halfOpenClient(gw.port, clearConnect((await gw.ticket('alice', 'stream')).ticket, 'stream'));
  t.equal(r.status, 200);
  r.socket.end();
  const closed = await closedWithin(r.socket, 5000);
  t.ok(closed.data.length > 0, `the console's bytes after the FIN still reached the client (${closed.data.length} bytes)`);
  t.ok(closed.elapsedMs >= HALF_CLOSE_MS - 100 && closed.elapsedMs < HALF_CLOSE_MS + 1500, `closed ${closed.elapsedMs} ms after the FIN`);
  const line = await eventually(() => gw.logs.find((l) => l.event === 'tunnel' && l.vm === 'stream'), 3000, 'tunnel log line');
  t.equal(line.closeReason, 'half-closed');
  t.equal(gw.ctx.tunnels.size, 0);
});

t.test('console FIN, client sends on: closed halfCloseMs later', async (t) => {
  const { gw } = await setupDesk(t, { tunnel: { halfCloseMs: HALF_CLOSE_MS, idleTimeoutMs: 0 } });
  // Greets, then ends its side at once while still reading.
  const console = await halfOpenConsole(t, (s) => {
    s.resume();
    s.end('bye');
  });
  await gw.addVm('mute', [{ protocol: 'vnc', host: '127.0.0.1', port: console.port, publishedPort: 5900 }], ['alice']);
  const r = await halfOpenClient(gw.port, clearConnect((await gw.ticket('alice', 'mute')).ticket, 'mute'));
  t.equal(r.status, 200);
  const timer = setInterval(() => r.socket.writable && r.socket.write('x'), 50);
  t.teardown(() => clearInterval(timer));
  const finAt = Date.now();
  const closed = await closedWithin(r.socket, 5000);
  clearInterval(timer);
  t.equal(Buffer.concat([r.rest, closed.data]).toString(), 'bye', 'the console\'s last words arrived');
  const after = Date.now() - finAt;
  t.ok(after >= HALF_CLOSE_MS - 200 && after < HALF_CLOSE_MS + 1500, `closed ${after} ms after the console's FIN`);
  await eventually(() => (gw.ctx.tunnels.size === 0 ? true : undefined), 3000, 'tunnel gone');
});

t.test('a half-close that completes in time loses nothing', async (t) => {
  const { gw } = await setupDesk(t, { tunnel: { halfCloseMs: HALF_CLOSE_MS } });
  // Answers the whole request once the client's FIN arrives, then ends.
  const console = await halfOpenConsole(t, (s) => {
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    s.on('end', () => s.end(Buffer.concat(got).toString().toUpperCase()));
  });
  await gw.addVm('upper', [{ protocol: 'vnc', host: '127.0.0.1', port: console.port, publishedPort: 5900 }], ['alice']);
  const r = await halfOpenClient(gw.port, clearConnect((await gw.ticket('alice', 'upper')).ticket, 'upper'));
  t.equal(r.status, 200);
  r.socket.end('shout this');
  const closed = await closedWithin(r.socket, 5000);
  t.equal(Buffer.concat([r.rest, closed.data]).toString(), 'SHOUT THIS');
  const line = await eventually(() => gw.logs.find((l) => l.event === 'tunnel' && l.vm === 'upper'), 3000, 'tunnel log line');
  t.not(line.closeReason, 'half-closed');
});
