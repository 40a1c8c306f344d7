import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { relay } from '../../gateway/tunnel/relay.js';

/** A connected pair of real loopback sockets (half-open allowed, like the gateway's). */
async function pair(t: Test): Promise<[net.Socket, net.Socket]> {
  const srv = net.createServer({ allowHalfOpen: true });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const accepted = once(srv, 'connection');
  const c = net.connect({ port: (srv.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const [s] = (await accepted) as [net.Socket];
  srv.close();
  for (const x of [c, s]) x.on('error', () => {});
  t.teardown(() => {
    c.destroy();
    s.destroy();
  });
  return [c, s];
}

const readAll = (s: net.Socket): Promise<Buffer> =>
  new Promise((resolve) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => resolve(Buffer.concat(parts)));
  });

t.test('bytes both ways in order, FIN carried over each way on its own (half-close)', async (t) => {
  const [client, gwClient] = await pair(t);
  const [gwConsole, consoleEnd] = await pair(t);
  relay(gwClient, gwConsole);
  const big = Buffer.alloc(8 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
  const toConsole = readAll(consoleEnd);
  client.end(big);
  t.same(await toConsole, big, '8 MiB reach the console in order, then its end');
  t.notOk(consoleEnd.writableEnded, 'the other way is still open');
  const toClient = readAll(client);
  consoleEnd.end('answer after the client finished');
  t.equal((await toClient).toString(), 'answer after the client finished', 'the console still answers a half-closed client');
});

t.test('a slow reader pauses the writer (backpressure) without losing bytes', async (t) => {
  const [client, gwClient] = await pair(t);
  const [gwConsole, consoleEnd] = await pair(t);
  relay(gwClient, gwConsole);
  consoleEnd.pause();
  const chunk = Buffer.alloc(1024 * 1024, 1);
  for (let i = 0; i < 32; i++) client.write(chunk);
  client.end();
  // With the console not reading, the relay stops reading the client once buffers are full.
  await new Promise((r) => setTimeout(r, 300));
  t.ok(gwClient.isPaused(), 'the client side is paused');
  t.ok(gwConsole.writableLength < 8 * 1024 * 1024, `the gateway holds a bounded amount (${gwConsole.writableLength} bytes)`);
  let got = 0;
  consoleEnd.on('data', (d: Buffer) => (got += d.length));
  consoleEnd.resume();
  await once(consoleEnd, 'end');
  t.equal(got, 32 * 1024 * 1024, 'every byte arrives');
});

t.test('nothing is written to a peer that was destroyed', async (t) => {
  const [client, gwClient] = await pair(t);
  const [gwConsole] = await pair(t);
  relay(gwClient, gwConsole);
  const errors: Error[] = [];
  gwConsole.on('error', (e) => errors.push(e));
  gwConsole.destroy();
  client.write('late bytes');
  await new Promise((r) => setTimeout(r, 100));
  t.same(errors, [], 'no write-after-destroy error');
});
