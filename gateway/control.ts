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
  async listen(waitMs = 0): Promise<void> {
    const until = Date.now() + waitMs;
    while (existsSync(this.path)) {
      // A socket left by a crashed gateway is removed; one that answers belongs to a live one.
      if (!(await answers(this.path))) {
        // Gone meanwhile (a predecessor closing it during a same-host restart) is as good as removed.
        try {
          unlinkSync(this.path);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        }
        break;
      }
      if (Date.now() >= until) throw new Error(`another oneport is running with this state folder (${this.path})`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.path, () => resolve());
    });
    chmodSync(this.path, 0o600);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
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
