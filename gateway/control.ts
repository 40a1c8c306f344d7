/**
 * The control socket: the same API, on a Unix socket in the state folder (mode 0600), for the
 * CLI on this machine. Whoever can open it owns the state folder anyway, so it acts as admin.
 */
import http from 'node:http';
import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import type { GatewayContext } from './context.js';
import { handleApi } from './http/api.js';
import { sendError } from './http/respond.js';
import { OneportError } from './errors.js';

export class ControlServer {
  private readonly server: http.Server;

  constructor(
    ctx: GatewayContext,
    private readonly path: string,
  ) {
    this.server = http.createServer((req, res) => {
      handleApi(ctx, req, res, { local: true }).then(
        (handled) => {
          if (!handled) sendError(res, new OneportError('ONEPORT_ERR_NOT_FOUND'));
        },
        (e: unknown) => {
          ctx.log.error({ err: e, event: 'handler-failed', where: 'control' }, 'control request failed');
          sendError(res, e);
        },
      );
    });
  }

  /** @param waitMs how long a live gateway on the path may take to let it go (a same-host restart's predecessor). */
  listen(waitMs = 0): Promise<void> {
    return bindControlSocket(this.server, this.path, waitMs);
  }

  /** A connection accepted elsewhere (workers: by the primary, on this socket's path). */
  accept(socket: net.Socket): void {
    socket.on('error', () => socket.destroy());
    this.server.emit('connection', socket);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Bind `server` on the control socket's path (mode 0600). A socket left by a crashed gateway is
 * removed; one that answers belongs to a live gateway: waited for up to `waitMs`, then an error.
 * Also the workers' primary's, which passes each connection to a worker (workers/primary.ts).
 */
export async function bindControlSocket(server: net.Server, path: string, waitMs = 0): Promise<void> {
  const until = Date.now() + waitMs;
  while (existsSync(path)) {
    if (!(await answers(path))) {
      // Gone meanwhile (a predecessor closing it during a same-host restart) is as good as removed.
      try {
        unlinkSync(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      break;
    }
    if (Date.now() >= until) throw new Error(`another oneport is running with this state folder (${path})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  chmodSync(path, 0o600);
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.on('error', () => resolve(false));
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
  });
}
