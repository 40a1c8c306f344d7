/**
 * The scene most integration tests start from: a gateway, an echo console, user "alice" with VM
 * "desk" (vnc, published on 5900); requests and tickets aimed at it; and small readers for the
 * gateway's own counters.
 */
import type { Test } from 'tap';
import type net from 'node:net';
import { startTestGateway, type TestGateway } from './gateway.js';
import { startBackend, type Backend } from './net.js';
import type { ConfigInput } from '../../gateway/config.js';

export async function setupDesk(t: Test, config: ConfigInput = {}): Promise<{ gw: TestGateway; echo: Backend }> {
  const gw = await startTestGateway(t, config);
  const echo = await startBackend(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], ['alice']);
  return { gw, echo };
}

/** A clear-text CONNECT carrying the ticket in the host name (`<ticket>.<vm>:5900`), as RDP clients send it. */
export function clearConnect(ticket: string, vm = 'desk'): string {
  return `CONNECT ${ticket}.${vm}:5900 HTTP/1.1\r\nHost: ${ticket}.${vm}:5900\r\n\r\n`;
}

/** The same ticket shape (so it is tried as a ticket), one character changed inside its MAC. */
export function forge(ticket: string): string {
  const i = ticket.length - 8;
  return `${ticket.slice(0, i)}${ticket[i] === 'a' ? 'b' : 'a'}${ticket.slice(i + 1)}`;
}

/** oneport_connections_total for one result label. */
export async function connectionCount(gw: TestGateway, result: string): Promise<number> {
  const m = await gw.ctx.metrics.connections.get();
  return m.values.find((v) => v.labels.result === result)?.value ?? 0;
}

/** Every connection the gateway accepted so far, whatever became of it. */
export async function acceptedConnections(gw: TestGateway): Promise<number> {
  return (await gw.ctx.metrics.connections.get()).values.reduce((sum, v) => sum + v.value, 0);
}

/** A console that streams as fast as the tunnel takes it, forever. */
export function startStreamer(t: Test): Promise<Backend> {
  return startBackend(t, (s: net.Socket) => {
    const chunk = Buffer.alloc(64 * 1024, 0x5a);
    const pump = (): void => {
      while (!s.destroyed && s.write(chunk));
    };
    s.on('drain', pump);
    pump();
  });
}
