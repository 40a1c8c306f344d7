/**
 * Resumable WebSocket tunnels: the `oneport.v1` subprotocol (README "Transparent resume").
 *
 * The client leg may drop (Wi-Fi to LTE, a laptop lid, a node restart behind a load balancer)
 * without the console noticing: the console connection stays open for `graceMs` after the client
 * leg drops, what the console sends meanwhile is kept (up to `maxBufferBytes`), and a client that
 * reconnects with its resume token, the session id and the count of bytes it received gets what
 * it missed, then carries on. Both directions count bytes, so nothing is lost or doubled:
 *
 *   binary message        payload bytes, either direction
 *   text message (JSON)   control:
 *     gateway -> client   {"type":"hello","session":id,"graceMs":n,"received":n,"resumed":bool}
 *                           first on every leg; `received` = bytes the gateway has taken from the
 *                           client so far: the client resends what it sent after that
 *     either direction    {"type":"ack","received":n}  total bytes received so far; the peer may
 *                           drop what it kept for replay up to there
 *
 * A resumed leg replays the console's bytes from the client's `received` offset. A client that
 * ends with close code 1000 ends the session; any other loss of the leg parks it.
 */
import type net from 'node:net';
import { WebSocket } from 'ws';
import { type CloseReason, Pump, type PumpOptions, type WsCloseFor } from './pump.js';

export const RESUMABLE_SUBPROTOCOL = 'oneport.v1';

export interface SessionOptions extends PumpOptions {
  readonly wsCloseFor: WsCloseFor;
  /** How long a parked session waits for its client. */
  readonly graceMs: number;
  /** Console bytes kept for replay (unacknowledged by the client); beyond, the session ends. */
  readonly maxBufferBytes: number;
  /** Acknowledge the client's bytes after this many (and at the latest every ackIntervalMs). */
  readonly ackBytes?: number;
  readonly ackIntervalMs?: number;
}

export interface SessionOwner {
  readonly id: string;
  readonly user: string;
  readonly vm: string;
  readonly protocol: string;
}

/** Why a resume was refused (the caller maps it to a close code). */
export type ResumeRefusal = 'gone' | 'not-yours' | 'offset';

export class ResumableSession extends Pump {
  /** Bytes taken from the client legs and written to the console. */
  private received = 0;
  /** Console bytes sent towards the client (offset of the next byte). */
  private sent = 0;
  /** Console bytes the client acknowledged: replay starts no earlier than this. */
  private acked = 0;
  private readonly replay: Buffer[] = [];
  private replayBytes = 0;
  private ws: WebSocket | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private ackTimer: NodeJS.Timeout | undefined;
  private unackedIn = 0;
  private consolePaused = false;
  private ended = false;
  private closeMessage: string | undefined;
  /** Legs attached over the session's life (1 = never resumed). */
  legs = 0;

  constructor(
    readonly owner: SessionOwner,
    console: net.Socket,
    ws: WebSocket,
    private readonly sopts: SessionOptions,
    private readonly onPark: (s: ResumableSession, parked: boolean) => void,
    queued: readonly Buffer[] = [],
  ) {
    super(console, sopts);
    console.on('data', (chunk: Buffer) => this.fromConsole(chunk));
    console.on('end', () => {
      this.reason ??= 'console-closed';
      this.end();
    });
    console.on('close', () => this.end());
    this.attach(ws, 0, queued);
    console.resume();
  }

  get parked(): boolean {
    return this.ws === undefined && !this.ended;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Attach a (new) client leg: hello, replay from `clientReceived`, then live. */
  attach(ws: WebSocket, clientReceived: number, queued: readonly Buffer[] = []): ResumeRefusal | undefined {
    if (this.ended) return 'gone';
    if (clientReceived < this.acked || clientReceived > this.sent) return 'offset';
    const old = this.ws;
    this.ws = undefined;
    if (old) {
      old.removeAllListeners('message');
      old.removeAllListeners('close');
      old.on('error', () => undefined);
      old.close(4409, 'resumed elsewhere');
    }
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    this.legs++;
    this.ws = ws;
    this.send(JSON.stringify({ type: 'hello', session: this.owner.id, graceMs: this.sopts.graceMs, received: this.received, resumed: this.legs > 1 }));
    // Replay what the client has not got, from its offset.
    let offset = this.sent - this.replayBytes;
    for (const chunk of this.replay) {
      const end = offset + chunk.length;
      if (end > clientReceived) this.sendBinary(chunk.subarray(Math.max(0, clientReceived - offset)));
      offset = end;
    }
    for (const b of queued) this.fromClient(b);
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      const chunk = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      if (isBinary) this.fromClient(chunk);
      else this.control(chunk);
    });
    ws.on('close', (code: number) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      clearTimeout(this.ackTimer);
      // 1000 / 1001: the client ended on purpose (closed the viewer, left the page).
      if (code === 1000 || code === 1001) {
        this.reason ??= 'client-closed';
        this.end();
      } else if (!this.ended) {
        this.park();
      }
    });
    ws.on('error', () => ws.terminate());
    this.onPark(this, false);
    return undefined;
  }

  private park(): void {
    this.graceTimer = setTimeout(() => {
      this.reason ??= 'client-closed';
      this.end();
    }, this.sopts.graceMs);
    this.graceTimer.unref();
    this.onPark(this, true);
  }

  private fromClient(chunk: Buffer): void {
    if (this.ended) return;
    this.received += chunk.length;
    this.unackedIn += chunk.length;
    if (!this.console.write(chunk)) {
      const ws = this.ws;
      ws?.pause();
      this.console.once('drain', () => ws?.resume());
    }
    if (this.unackedIn >= (this.sopts.ackBytes ?? 64 * 1024)) this.ack();
    else if (!this.ackTimer) this.ackTimer = setTimeout(() => this.ack(), this.sopts.ackIntervalMs ?? 500);
  }

  private ack(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.unackedIn = 0;
    this.send(JSON.stringify({ type: 'ack', received: this.received }));
  }

  private control(raw: Buffer): void {
    let msg: { type?: unknown; received?: unknown };
    try {
      msg = JSON.parse(raw.toString('utf8')) as typeof msg;
    } catch {
      return;
    }
    if (msg.type === 'ack' && typeof msg.received === 'number' && Number.isSafeInteger(msg.received) && msg.received > this.acked && msg.received <= this.sent) {
      this.acked = msg.received;
      this.trim();
    }
  }

  /** Drop replay chunks the client acknowledged. */
  private trim(): void {
    let start = this.sent - this.replayBytes;
    while (this.replay.length > 0 && start + this.replay[0]!.length <= this.acked) {
      const c = this.replay.shift()!;
      this.replayBytes -= c.length;
      start += c.length;
    }
    if (this.consolePaused && this.replayBytes <= this.sopts.maxBufferBytes / 2) {
      this.consolePaused = false;
      this.console.resume();
    }
  }

  private fromConsole(chunk: Buffer): void {
    this.sent += chunk.length;
    this.replay.push(chunk);
    this.replayBytes += chunk.length;
    if (this.replayBytes > this.sopts.maxBufferBytes) {
      if (this.ws) {
        // A live client that does not acknowledge: slow down the console instead of dropping it.
        this.consolePaused = true;
        this.console.pause();
      } else {
        // Parked and the console keeps talking: the bound is reached, end cleanly.
        this.reason ??= 'too-large';
        this.end();
        return;
      }
    }
    this.sendBinary(chunk);
  }

  private sendBinary(chunk: Buffer): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(chunk, { binary: true });
  }

  private send(text: string): void {
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(text);
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.graceTimer);
    clearTimeout(this.ackTimer);
    const ws = this.ws;
    this.ws = undefined;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) {
      const { code, message } = this.sopts.wsCloseFor(this.reason ?? 'console-closed');
      ws.close(code, this.closeMessage ?? message);
      const t = setTimeout(() => ws.terminate(), this.sopts.lingerMs ?? 5000);
      t.unref();
      ws.once('close', () => clearTimeout(t));
    }
    this.console.destroy();
    this.finish();
    this.onPark(this, false);
  }

  close(reason: CloseReason, message?: string): void {
    this.reason ??= reason;
    this.closeMessage = message;
    this.end();
  }

  protected override fail(reason: CloseReason): void {
    this.reason ??= reason;
    this.end();
  }

  protected destroyClient(): void {
    this.ws?.terminate();
  }

  /** Bytes kept for replay right now (for tests and metrics). */
  get buffered(): number {
    return this.replayBytes;
  }
}

/**
 * This node's resumable sessions by id; in a cluster each is also recorded in Redis (which node
 * holds it), so a client that comes back through another node is relayed here.
 */
export class SessionRegistry {
  private readonly sessions = new Map<string, ResumableSession>();

  constructor(private readonly record?: { put(id: string, parked: boolean): void; forget(id: string): void }) {}

  get(id: string): ResumableSession | undefined {
    return this.sessions.get(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  get parkedCount(): number {
    let n = 0;
    for (const s of this.sessions.values()) if (s.parked) n++;
    return n;
  }

  /** Called by a session whenever a leg attaches, it parks, or it ends. */
  update(s: ResumableSession, parked: boolean): void {
    if (s.isEnded) {
      if (this.sessions.delete(s.owner.id)) this.record?.forget(s.owner.id);
      return;
    }
    this.sessions.set(s.owner.id, s);
    this.record?.put(s.owner.id, parked);
  }
}
