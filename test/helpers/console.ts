/**
 * A stand-in VM console on a fixed loopback port, for tests where a console goes away and comes
 * back at the same address (a VM restarted by the hypervisor, here or on its replica): counts
 * connections, tracks sockets, and closes everything at teardown.
 */
import net from 'node:net';
import { once } from 'node:events';

export interface FixedConsole {
  /** Connections accepted so far. */
  accepted(): number;
  /** Stop listening and drop every connection (the console dies). */
  close(): Promise<void>;
  /** Drop every connection but keep listening. */
  kill(): void;
}

export async function fixedPortConsole(t: { teardown(fn: () => unknown): void }, port: number, onSocket: (s: net.Socket) => void): Promise<FixedConsole> {
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    onSocket(s);
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    if (server.listening) await new Promise<void>((r) => server.close(() => r()));
  };
  t.teardown(close);
  return { accepted: () => accepted, close, kill: () => sockets.forEach((s) => s.destroy()) };
}
