/**
 * Inside TLS, before Node's HTTP parser (which answers 400 to methods it does not know): peek at
 * the first bytes under a deadline and hand `RDG_OUT_DATA` / `RDG_IN_DATA` requests to the RD
 * Gateway entrance with the bytes read so far; anything else goes to the HTTPS server unchanged,
 * its bytes put back. Deciding takes at most the 13 bytes of `RDG_OUT_DATA `: any other first
 * byte says "not me" at once.
 */
import type tls from 'node:tls';
import { rdgRequestDetector } from '../../protocols/tsgu.js';

export interface TlsRoutes {
  /** An RD Gateway request; `head` holds every byte read so far (at least its method). */
  readonly rdg: (socket: tls.TLSSocket, head: Buffer) => void;
  /** Everything else, bytes put back: the HTTPS server. */
  readonly http: (socket: tls.TLSSocket) => void;
}

export function routeTls(socket: tls.TLSSocket, timeoutMs: number, routes: TlsRoutes): void {
  let head: Buffer = Buffer.alloc(0);
  let decided = false;
  const timer = setTimeout(() => decide('silent'), timeoutMs);
  timer.unref();
  const onData = (chunk: Buffer): void => {
    head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    const d = rdgRequestDetector.detect(head);
    if (d.kind === 'more') return;
    decide(d.kind === 'match' ? 'rdg' : 'http');
  };
  const onGone = (): void => decide('gone');
  const decide = (to: 'rdg' | 'http' | 'silent' | 'gone'): void => {
    if (decided) return;
    decided = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('end', onGone);
    socket.removeListener('close', onGone);
    socket.pause();
    if (to === 'rdg') {
      routes.rdg(socket, head);
      return;
    }
    if (to !== 'http') {
      // Silent for as long as the HTTP server would wait for headers, or gone: nothing to answer.
      socket.destroy();
      return;
    }
    if (head.length > 0) socket.unshift(head);
    routes.http(socket);
    // The HTTP parser reads the handle; the bytes put back wait in the stream until it flows.
    socket.resume();
  };
  socket.on('data', onData);
  socket.on('end', onGone);
  socket.on('close', onGone);
}
