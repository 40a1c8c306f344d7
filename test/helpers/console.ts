/**
 * Stand-in VM consoles. A console on a fixed loopback port, for tests where a console goes away and comes
 * back at the same address (a VM restarted by the hypervisor, here or on its replica): counts
 * connections, tracks sockets, and closes everything at teardown.
 */
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { vncAuthResponse } from '../../protocols/vnc-auth.js';

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

/** A console that asks for a VNC password (RFB 3.8, VNC Authentication only), built from protocols/vnc-auth.ts. */
export interface VncAuthConsole {
  readonly port: number;
  /** Logins it accepted / refused so far. */
  readonly accepted: () => number;
  readonly refused: () => number;
}

/**
 * A minimal RFB 3.8 server on loopback, port 0: VNC Authentication with `password`, then a 4x4
 * ServerInit named "fake" after ClientInit. Enough to count who logs in, and how often.
 */
export async function vncAuthConsole(t: { teardown(fn: () => unknown): void }, password: string): Promise<VncAuthConsole> {
  let accepted = 0;
  let refused = 0;
  const server = net.createServer((s) => {
    s.on('error', () => {});
    const challenge = randomBytes(16);
    let held = Buffer.alloc(0);
    let step = 0;
    s.write('RFB 003.008\n');
    s.on('data', (d: Buffer) => {
      held = Buffer.concat([held, d]);
      for (;;) {
        const need = [12, 1, 16, 1][step];
        if (need === undefined || held.length < need) return;
        const msg = held.subarray(0, need);
        held = held.subarray(need);
        if (step === 0) s.write(Buffer.from([1, 2]));
        else if (step === 1) s.write(challenge);
        else if (step === 2) {
          const good = msg.equals(vncAuthResponse(challenge, password));
          if (!good) {
            refused++;
            const reason = Buffer.from('Authentication failed');
            s.end(Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from([0, 0, 0, reason.length]), reason]));
            return;
          }
          accepted++;
          s.write(Buffer.from([0, 0, 0, 0]));
        } else {
          const init = Buffer.alloc(24);
          init.writeUInt16BE(4, 0);
          init.writeUInt16BE(4, 2);
          init.set([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0], 4);
          init.writeUInt32BE(4, 20);
          s.write(Buffer.concat([init, Buffer.from('fake')]));
        }
        step++;
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as net.AddressInfo).port, accepted: () => accepted, refused: () => refused };
}
