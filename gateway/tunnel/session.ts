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
 *
 * Memory per session is bounded: the replay by `maxBufferBytes` (while the node is over its byte
 * budget, by BUDGET_WINDOW), and what is queued on the leg by WS_HIGH_WATER; beyond either the
 * console is paused, so a client that does not read or does not acknowledge slows its own console
 * down. The caps across sessions live in session-registry.ts.
 */
import { WebSocket } from 'ws';
import type { ConsoleStream } from './console-stream.js';
import { type CloseReason, Pump, type PumpOptions, type WsCloseFor } from './pump.js';
import { ReplayBuffer } from './replay-buffer.js';
import { closeWebSocket } from './close.js';
import type { HeldSession, SessionHost, SessionOwner } from './session-registry.js';

export type { SessionOwner } from './session-registry.js';

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

/** Why a resume was refused (the caller maps it to a close code). */
export type ResumeRefusal = 'gone' | 'not-yours' | 'offset';

/** WebSocket sends in flight above this pause the console until the client has taken them. */
const WS_HIGH_WATER = 1024 * 1024;
const WS_LOW_WATER = 256 * 1024;
/** Replay bytes a live session may hold while the node is over tunnel.resume.maxBufferedBytes. */
export const BUDGET_WINDOW = 1024 * 1024;

export class ResumableSession extends Pump implements HeldSession {
  /** Bytes taken from the client legs and written to the console. */
  private received = 0;
  /** Console bytes, by absolute offset, kept until the client acknowledges them. */
  private readonly replay = new ReplayBuffer();
  /** Replay bytes the host has been told about (it keeps the node's total). */
  private reported = 0;
  private lastClient: string;
  /**
   * Console bytes handed to the network on the current leg (ws send callbacks): a client cannot
   * acknowledge more than this, so acks never trim what it has not been sent.
   */
  private flushed = 0;
  /** Bytes queued on the current leg and not yet flushed. */
  private inFlight = 0;
  private ws: WebSocket | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private ackTimer: NodeJS.Timeout | undefined;
  private unackedIn = 0;
  /** Why the console is paused: the replay bound, the leg's send queue, or both. */
  private pausedForReplay = false;
  private pausedForLeg = false;
  private ended = false;
  private closeMessage: string | undefined;
  /** Legs attached over the session's life (1 = never resumed). */
  legs = 0;

  constructor(
    readonly owner: SessionOwner,
    console: ConsoleStream,
    ws: WebSocket,
    client: string,
    private readonly sopts: SessionOptions,
    private readonly host: SessionHost<ResumableSession>,
    queued: readonly Buffer[] = [],
  ) {
    super(console, sopts);
    this.lastClient = client;
    console.on('data', (chunk: Buffer) => this.fromConsole(chunk));
    console.on('end', () => {
      this.reason ??= 'console-closed';
      this.end();
    });
    console.on('close', () => this.end());
    this.attach(ws, client, 0, queued);
    console.resume();
  }

  /** The address of the client leg attached last (for a parked session, the one that parked it). */
  get client(): string {
    return this.lastClient;
  }

  override get parked(): boolean {
    return this.ws === undefined && !this.ended;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Attach a (new) client leg: hello, replay from `clientReceived`, then live. */
  attach(ws: WebSocket, client: string, clientReceived: number, queued: readonly Buffer[] = []): ResumeRefusal | undefined {
    if (this.ended) return 'gone';
    if (!this.replay.canReplayFrom(clientReceived)) return 'offset';
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
    this.lastClient = client;
    // The new leg starts with nothing in flight; what the client has is what it says it has.
    this.inFlight = 0;
    this.flushed = clientReceived;
    this.setLegPaused(false);
    this.send(JSON.stringify({ type: 'hello', session: this.owner.id, graceMs: this.sopts.graceMs, received: this.received, resumed: this.legs > 1 }));
    // Replay what the client has not got, from its offset.
    for (const chunk of this.replay.since(clientReceived)) this.sendBinary(chunk);
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
    this.host.update(this, false);
    return undefined;
  }

  private park(): void {
    // Nothing can be sent while parked; the replay bound alone limits what the console may add.
    this.inFlight = 0;
    this.setLegPaused(false);
    this.graceTimer = setTimeout(() => {
      this.reason ??= 'client-closed';
      this.end();
    }, this.sopts.graceMs);
    this.graceTimer.unref();
    this.host.update(this, true);
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
    if (raw.length > 256) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      return;
    }
    // Any JSON value may arrive ("null", a number, an array): only an object is a control message.
    if (typeof parsed !== 'object' || parsed === null) return;
    const msg = parsed as { type?: unknown; received?: unknown };
    if (msg.type !== 'ack' || typeof msg.received !== 'number' || !Number.isSafeInteger(msg.received)) return;
    // An ack may not run ahead of what was actually put on the wire to this client: clamped, not
    // ignored, since an honest client often reads part of a write whose callback has not run yet
    // (in the 8 MiB channel test, 10 of 24 acks were ahead of `flushed`); dropping those left the
    // replay to grow until the next ack.
    const to = Math.min(msg.received, this.flushed);
    if (to > this.replay.acked) {
      this.replay.ackTo(to);
      this.reportReplay();
      this.checkReplayBound();
    }
  }

  private fromConsole(chunk: Buffer): void {
    this.replay.append(chunk);
    // The node's byte budget may end this very session (parked, and the biggest).
    this.reportReplay();
    if (this.ended) return;
    if (this.replay.size > this.sopts.maxBufferBytes && !this.ws) {
      // Parked and the console keeps talking: the bound is reached, end cleanly.
      this.reason ??= 'too-large';
      this.end();
      return;
    }
    this.checkReplayBound();
    this.sendBinary(chunk);
  }

  /** Tell the host how the replay changed, so it keeps the node's total (and the byte budget). */
  private reportReplay(): void {
    const delta = this.replay.size - this.reported;
    if (delta === 0) return;
    this.reported = this.replay.size;
    this.host.replayChanged(delta);
  }

  /**
   * A client that does not acknowledge slows the console down instead of growing the buffer.
   * While the node is over its byte budget the bound is BUDGET_WINDOW: a client that acks keeps
   * going at that window per round trip, one that does not holds no more than it.
   */
  private checkReplayBound(): void {
    const bound = this.host.overBudget ? Math.min(BUDGET_WINDOW, this.sopts.maxBufferBytes) : this.sopts.maxBufferBytes;
    const over = this.replay.size > bound;
    if (over && !this.pausedForReplay) {
      this.pausedForReplay = true;
      this.updateConsoleFlow();
    } else if (this.pausedForReplay && this.replay.size <= bound / 2) {
      this.pausedForReplay = false;
      this.updateConsoleFlow();
    }
  }

  private setLegPaused(paused: boolean): void {
    if (this.pausedForLeg === paused) return;
    this.pausedForLeg = paused;
    this.updateConsoleFlow();
  }

  private updateConsoleFlow(): void {
    if (this.ended) return;
    if (this.pausedForReplay || this.pausedForLeg) this.console.pause();
    else this.console.resume();
  }

  /** Send console bytes on the current leg with backpressure: a client that does not read pauses the console. */
  private sendBinary(chunk: Buffer): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    this.inFlight += chunk.length;
    ws.send(chunk, { binary: true }, (err) => {
      if (this.ws !== ws) return;
      this.inFlight -= chunk.length;
      if (!err) this.flushed += chunk.length;
      if (this.pausedForLeg && this.inFlight <= WS_LOW_WATER) this.setLegPaused(false);
    });
    if (this.inFlight > WS_HIGH_WATER) this.setLegPaused(true);
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
    if (ws) {
      const { code, message } = this.sopts.wsCloseFor(this.reason ?? 'console-closed');
      closeWebSocket(ws, code, this.closeMessage ?? message, this.sopts.lingerMs);
    }
    this.console.destroy();
    // Nothing will be replayed any more: give the bytes back now, not when the session is collected.
    this.replay.ackTo(this.replay.end);
    this.reportReplay();
    this.finish();
    this.host.update(this, false);
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
    return this.replay.size;
  }

  /**
   * Console bytes handed to the current leg and not yet flushed to its socket (ws send callbacks
   * outstanding): the session's memory beyond the replay buffer. Bounded by WS_HIGH_WATER plus
   * one console read, or by the replay sent at once to a resumed leg.
   */
  get inFlightBytes(): number {
    return this.inFlight;
  }
}
