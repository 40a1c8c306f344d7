/**
 * Small real-socket helpers for tests and benchmarks: free ports, waiting until a port accepts,
 * backends that echo or count, a raw CONNECT client that reads the status line itself, and
 * waiting on events instead of sleeping.
 */
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Backend {
  readonly port: number;
  /** Connections accepted so far. */
  accepted: number;
  /** Sockets currently open. */
  readonly open: Set<net.Socket>;
  /** Resolves with the next accepted socket. */
  nextConnection(): Promise<net.Socket>;
  close(): Promise<void>;
}

/** A TCP server on loopback, port 0. `onSocket` decides what it does (default: echo). */
export async function startBackend(t: Teardown, onSocket: (s: net.Socket) => void = (s) => s.pipe(s), host = '127.0.0.1'): Promise<Backend> {
  const open = new Set<net.Socket>();
  const waiters: Array<(s: net.Socket) => void> = [];
  const server = net.createServer({ allowHalfOpen: false }, (s) => {
    s.on('error', () => {});
    b.accepted++;
    open.add(s);
    s.once('close', () => open.delete(s));
    onSocket(s);
    waiters.shift()?.(s);
  });
  server.listen(0, host);
  await once(server, 'listening');
  const b: Backend = {
    port: (server.address() as net.AddressInfo).port,
    accepted: 0,
    open,
    nextConnection: () => new Promise((resolve) => waiters.push(resolve)),
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  t.teardown(() => b.close());
  return b;
}

/**
 * A loopback port nobody listens on right now (bound to port 0, then released), for a server a
 * test starts later; never Redis's well-known 6379, which a test's own redis-server may want.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const s = net.createServer();
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (s.address() as net.AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    if (port !== 6379) return port;
  }
}

/** The same, named for what a test means by it: a console address where dialling is refused. */
export const closedPort = freePort;

/**
 * Resolves once something accepts on 127.0.0.1:`port`, checking every 50 ms; fails early when
 * `gaveUp()` says the process that should listen there is gone.
 */
export async function waitForPort(port: number, deadlineMs: number, gaveUp: () => boolean = () => false): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (gaveUp() || Date.now() > end) throw new Error(`nothing accepts on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface RawConnectResult {
  readonly status: number;
  readonly head: string;
  readonly body: string;
  readonly socket: net.Socket | tls.TLSSocket;
  /** Bytes that followed the response headers (tunnel data). */
  readonly rest: Buffer;
}

/**
 * Write `request` verbatim on a new connection (plain, or TLS when `ca` is given) and read the
 * response head. For 2xx the socket is left open for tunnel traffic; otherwise the body is read
 * to the end.
 */
export async function rawRequest(port: number, request: string | Buffer, opts: { ca?: string; servername?: string; localAddress?: string; timeoutMs?: number; host?: string } = {}): Promise<RawConnectResult> {
  const host = opts.host ?? '127.0.0.1';
  const socket = opts.ca
    ? tls.connect({ port, host, ca: opts.ca, servername: opts.servername ?? 'localhost', ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) })
    : net.connect({ port, host, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
  socket.on('error', () => {});
  await once(socket, opts.ca ? 'secureConnect' : 'connect');
  socket.write(request);
  return readResponse(socket, opts.timeoutMs ?? 10_000);
}

export function readResponse(socket: net.Socket | tls.TLSSocket, timeoutMs = 10_000): Promise<RawConnectResult> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    let headEnd = -1;
    let status = 0;
    let head = '';
    const timer = setTimeout(() => done(new Error(`no complete response within ${timeoutMs} ms; got ${JSON.stringify(buf.toString('latin1').slice(0, 200))}`)), timeoutMs);
    const done = (err?: Error): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onEnd);
      if (err) reject(err);
      else {
        const rest = buf.subarray(headEnd + 4);
        resolve({ status, head, body: status >= 200 && status < 300 ? '' : rest.toString('utf8'), socket, rest });
      }
    };
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      if (headEnd < 0) {
        headEnd = buf.indexOf('\r\n\r\n');
        if (headEnd < 0) return;
        head = buf.subarray(0, headEnd).toString('latin1');
        status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
        if (status >= 200 && status < 300) {
          socket.pause();
          done();
        }
      }
    };
    const onEnd = (): void => {
      if (headEnd < 0) done(new Error(`connection closed before a response; got ${JSON.stringify(buf.toString('latin1').slice(0, 200))}`));
      else done();
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
  });
}

/** The ONEPORT_ERR_* code of a JSON error body (e.g. `rawRequest`'s `body`), if it is one. */
export function errorCode(body: string): string | undefined {
  try {
    return (JSON.parse(body) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

export function basic(user: string, secret: string): string {
  return `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;
}

/** Send `data` through an open tunnel and read back exactly as many bytes. */
export function echoRoundTrip(socket: net.Socket | tls.TLSSocket, data: Buffer, timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => reject(new Error(`echo: got ${got.length} of ${data.length} bytes`)), timeoutMs);
    const onData = (d: Buffer): void => {
      got = Buffer.concat([got, d]);
      if (got.length >= data.length) {
        clearTimeout(timer);
        socket.removeListener('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.resume();
    socket.write(data);
  });
}

/** A plain TCP connection to the gateway on loopback (optionally from another 127.x address), connected. */
export async function connectRaw(port: number, opts: { localAddress?: string } = {}): Promise<net.Socket> {
  const s = net.connect({ port, host: '127.0.0.1', ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
  s.on('error', () => {});
  await once(s, 'connect');
  return s;
}

/**
 * Resolves when the peer closes `socket` (its 'close' event), with what it sent meanwhile and how
 * long that took; rejects if the socket is still open after `ms`. The socket is read (resumed) so
 * a FIN is noticed.
 */
export function closedWithin(socket: net.Socket | tls.TLSSocket, ms = 5000): Promise<{ elapsedMs: number; data: Buffer }> {
  const started = Date.now();
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    if (socket.destroyed) {
      resolve({ elapsedMs: 0, data: Buffer.alloc(0) });
      return;
    }
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.once('close', () => {
      clearTimeout(timer);
      resolve({ elapsedMs: Date.now() - started, data: Buffer.concat(chunks) });
    });
    socket.resume();
  });
}

/** socat -d -d says "listening on" once its socket is bound: wait for that line. */
export function socatListening(stderr: NodeJS.ReadableStream, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`socat did not start listening: ${text}`)), timeoutMs);
    stderr.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}
