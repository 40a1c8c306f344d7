/**
 * WebSocket client legs (CONTRACT section 4): binary messages carry the console's bytes. "No" is
 * a close code from errors.ts; "yes" starts a plain pump (`binary` or no subprotocol) or a
 * resumable session (`oneport.v1`, session.ts). Messages that arrive while the broker authorizes
 * and reaches the console are kept, up to a bound. The leg pings its client and cuts one that
 * stops answering.
 */
import { WebSocket } from 'ws';
import { OneportError } from '../../errors.js';
import { wsCloseFor } from '../close.js';
import { ReachFailure } from '../failures.js';
import { type CloseReason, type Pump, WebSocketPump } from '../pump.js';
import type { ReachedConsole } from '../reach.js';
import type { TunnelTarget } from '../request.js';
import { RESUMABLE_SUBPROTOCOL, ResumableSession } from '../session.js';
import type { SessionCap, SessionRegistry } from '../session-registry.js';
import { newId } from '../../auth/tokens.js';
import type { AttachOptions, ClientLeg } from './leg.js';

export interface WebSocketLegOptions {
  readonly client: string;
  readonly acceptedAt: bigint;
  readonly pingIntervalMs: number;
  /** Bound of the jittered wait told to rerouted clients. */
  readonly rerouteRetryMs: number;
  /** Bytes kept from the client before the console answered; beyond, the tunnel is refused. */
  readonly preConnectBufferBytes: number;
  /** For `oneport.v1` legs: where sessions are registered, and their grace and replay bounds. */
  readonly resume: { readonly sessions: SessionRegistry<ResumableSession>; readonly graceMs: number; readonly maxBufferBytes: number };
}

/**
 * A new resumable session a cap refuses: 1013 "try again later", with the code saying which
 * (README "Transparent resume"): a user at their cap must close one; a full node may clear soon.
 */
export function capRefusal(cap: SessionCap): OneportError {
  return cap === 'buffered-bytes'
    ? new OneportError('ONEPORT_ERR_RESUME_BUSY', undefined, { retryAfter: 5 })
    : new OneportError('ONEPORT_ERR_RESUME_LIMIT');
}

/** Ping every interval; a client that has not answered the previous ping is gone. Stops when the socket closes. */
export function keepAlive(ws: WebSocket, intervalMs: number): void {
  let alive = true;
  const onPong = (): void => void (alive = true);
  ws.on('pong', onPong);
  const timer = setInterval(() => {
    if (!alive) {
      ws.terminate();
      return;
    }
    alive = false;
    ws.ping();
  }, intervalMs);
  timer.unref();
  ws.once('close', () => {
    clearInterval(timer);
    ws.removeListener('pong', onPong);
  });
}

/**
 * What every WebSocket leg does before its tunnel exists: keep the client's messages (up to
 * `queueCap` bytes; beyond, `overflow`), notice when it leaves, and let go of both at attach or
 * refusal (`detach`).
 */
export abstract class EarlyWebSocketLeg {
  readonly client: string;
  readonly acceptedAt: bigint;
  private readonly abort = new AbortController();
  protected queued: Buffer[] = [];
  protected queuedBytes = 0;
  protected overflow = false;
  /** Called after each message is kept, and when the client leaves. */
  protected onBytes: (() => void) | undefined;
  private readonly onMessage = (data: Buffer | ArrayBuffer | Buffer[]): void => {
    const chunk = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? Buffer.from(data) : Buffer.from(data);
    this.queuedBytes += chunk.length;
    if (this.queuedBytes > this.queueCap) this.overflow = true;
    else this.queued.push(chunk);
    this.onBytes?.();
  };
  private readonly onClose = (): void => {
    this.abort.abort();
    this.onBytes?.();
  };

  protected constructor(
    protected readonly ws: WebSocket,
    opts: { readonly client: string; readonly acceptedAt: bigint },
    private readonly queueCap: number,
  ) {
    this.client = opts.client;
    this.acceptedAt = opts.acceptedAt;
    ws.on('error', () => ws.terminate());
    ws.on('message', this.onMessage);
    ws.once('close', this.onClose);
  }

  get gone(): AbortSignal {
    return this.abort.signal;
  }

  protected detach(): void {
    this.ws.removeListener('message', this.onMessage);
    this.ws.removeListener('close', this.onClose);
    this.onBytes = undefined;
  }
}

export class WebSocketLeg extends EarlyWebSocketLeg implements ClientLeg {
  readonly transport = 'websocket' as const;

  constructor(
    ws: WebSocket,
    private readonly opts: WebSocketLegOptions,
  ) {
    super(ws, opts, opts.preConnectBufferBytes);
  }

  admit(target: TunnelTarget): void {
    if (this.ws.protocol !== RESUMABLE_SUBPROTOCOL) return;
    const cap = this.opts.resume.sessions.precheck(target.user.name);
    if (cap) throw capRefusal(cap);
  }

  attach(console: ReachedConsole, target: TunnelTarget, attachOpts: AttachOptions): Pump {
    this.detach();
    if (this.ws.readyState !== WebSocket.OPEN) throw new ReachFailure('CLIENT_GONE');
    if (this.overflow) throw new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE', 'too much data before the console answered');
    const { rerouteRetryMs } = this.opts;
    const { idleTimeoutMs } = attachOpts;
    const closeFor = (why: CloseReason): { code: number; message: string } => wsCloseFor(why, rerouteRetryMs);
    let pump: Pump;
    if (this.ws.protocol === RESUMABLE_SUBPROTOCOL) {
      const { sessions, graceMs, maxBufferBytes } = this.opts.resume;
      // Parked sessions that must give way end here; the broker closes the console if refused.
      const cap = sessions.admit(target.user.name);
      if (cap) throw capRefusal(cap);
      const owner = { id: newId(), user: target.user.name, vm: target.vm.name, protocol: target.endpoint.protocol };
      pump = new ResumableSession(owner, console.socket, this.ws, this.client, { idleTimeoutMs, wsCloseFor: closeFor, graceMs, maxBufferBytes, preface: console.preface }, sessions, this.queued);
    } else {
      pump = new WebSocketPump(this.ws, console.socket, { idleTimeoutMs, wsCloseFor: closeFor, judgeConsoleEnd: attachOpts.endJudge, preface: console.preface }, this.queued);
    }
    keepAlive(this.ws, this.opts.pingIntervalMs);
    return pump;
  }

  refuse(err: OneportError): void {
    this.detach();
    const reason = err.retryAfter === undefined ? err.code : JSON.stringify({ code: err.code, retryMs: err.retryAfter * 1000 });
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(err.wsClose, reason.slice(0, 120));
  }
}
