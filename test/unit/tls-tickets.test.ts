import t, { type Test } from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { TicketKeys } from '../../gateway/tls-tickets.js';
import { testPki } from '../helpers/certs.js';

const { ca, server } = testPki();

/** A TLS server the gateway's way (TLSSocket over an accepted socket, context from a picker). */
async function serve(t: Test, pick: () => tls.SecureContext): Promise<number> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((raw) => {
    raw.on('error', () => {});
    sockets.add(raw);
    raw.once('close', () => sockets.delete(raw));
    const s = new tls.TLSSocket(raw, { isServer: true, secureContext: pick(), SNICallback: (_n, cb) => cb(null, pick()) });
    s.on('error', () => s.destroy());
    s.once('secure', () => s.end('hello'));
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    srv.close();
  });
  return (srv.address() as net.AddressInfo).port;
}

/** One handshake; resolves whether it was resumed and the newest session the server gave. */
async function handshake(port: number, session: Buffer | undefined): Promise<{ reused: boolean; session: Buffer | undefined }> {
  const s = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: ca.cert, ...(session ? { session } : {}) });
  s.on('error', () => {});
  let latest: Buffer | undefined;
  s.on('session', (b: Buffer) => (latest = b));
  s.resume();
  await once(s, 'end');
  const reused = s.isSessionReused();
  s.destroy();
  return { reused, session: latest };
}

t.test('tickets resume across contexts sharing the key, and not after a rotation', async (t) => {
  let now = 1_000;
  const keys = new TicketKeys(60_000, () => now);
  const a = keys.add(tls.createSecureContext({ cert: server.cert, key: server.key, ticketKeys: keys.current }));
  const b = keys.add(tls.createSecureContext({ cert: server.cert, key: server.key, ticketKeys: keys.current }));
  let next = a;
  const port = await serve(t, () => {
    keys.check();
    return next;
  });
  const first = await handshake(port, undefined);
  t.notOk(first.reused, 'the first handshake is a full one');
  t.ok(first.session, 'with a ticket');
  next = b;
  const second = await handshake(port, first.session);
  t.ok(second.reused, 'resumed on another context of the same port (same key)');
  now += 59_000;
  const kept = second.session ?? first.session;
  t.ok((await handshake(port, kept)).reused, 'still resumed just before the rotation');
  const before = keys.current;
  now += 2_000;
  const third = await handshake(port, kept);
  t.notOk(third.reused, 'after the rotation the old ticket gives a full handshake');
  t.not(keys.current.toString('hex'), before.toString('hex'), 'a new key');
  t.ok((await handshake(port, third.session)).reused, 'and the new ticket resumes');
});
