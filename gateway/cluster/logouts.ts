/**
 * Logouts reach every node: a node that logs an API session out publishes its id on a Redis
 * channel (`<prefix>logout`), and every node ends the tunnels that session's credentials opened
 * (tunnel/revoke.ts). Publish and subscribe are best effort: the revocation itself is stored
 * (auth store) and checked on every new tunnel and resume; this only reaches the live ones.
 */
import type { Redis } from 'ioredis';
import type { Logger } from '../log.js';

const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;

export class LogoutFeed {
  private sub: Redis | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly channel: string,
    private readonly nodeId: string,
    private readonly log: Logger,
    /** Called for a session logged out on another node (this node's own are handled at once). */
    private readonly onLogout: (sid: string) => void,
  ) {}

  async start(): Promise<void> {
    const sub = this.redis.duplicate();
    this.sub = sub;
    sub.on('error', () => undefined);
    sub.on('message', (channel: string, message: string) => {
      if (channel !== this.channel || message.length > 200) return;
      const [from, sid] = message.split(' ');
      if (from === this.nodeId || sid === undefined || !SESSION_ID.test(sid)) return;
      this.onLogout(sid);
    });
    await sub.connect();
    await sub.subscribe(this.channel);
  }

  publish(sid: string): void {
    this.redis.publish(this.channel, `${this.nodeId} ${sid}`).catch((err: unknown) =>
      this.log.warn({ event: 'logout-publish-failed', err: (err as Error).message }, 'could not tell the other nodes about a logout; their live tunnels of that session stay open'),
    );
  }

  async stop(): Promise<void> {
    await this.sub?.quit().catch(() => this.sub?.disconnect());
  }
}
