/**
 * The byte pump: splices a client leg to a console socket.
 *
 * - Backpressure both ways: a side whose peer cannot keep up is paused until the peer drains.
 * - Half-close: a FIN from one side is passed on as a FIN to the other; the tunnel ends when both
 *   directions have ended, or at once when either side fails, or `halfCloseMs` after the first FIN
 *   (the other direction does not get to stream forever).
 * - Idle timeout on the console leg (it sees every byte in both directions).
 * - Either side's error tears both down; `close(reason)` ends the tunnel on purpose (shutdown,
 *   reroute) and is idempotent.
 *
 * The client leg is a stream socket (CONNECT, plain or TLS) or a WebSocket (binary messages).
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocket } from 'ws';
import { closeWebSocket } from './close.js';
import { type ConsoleStream, HANDSHAKE_FAILED, type HandshakeFailure } from './console-stream.js';

export type CloseReason =
  | 'client-closed'
  | 'console-closed'
  | 'client-error'
  | 'console-error'
  | 'idle'
  | 'shutdown'
  | 'rerouted'
  | 'too-large'
  /** The user's access ended (user deleted, VM unassigned, logout, password change, terminated by an admin). */
  | 'revoked'
  /** A parked resumable session gave way to a cap on sessions or replay bytes (session-registry.ts). */
  | 'session-cap'

  /** The console session reached its maximum session time (policy.ts). */
  | 'session-expired'
  /** One side sent FIN and the other direction was still open `halfCloseMs` later. */
  | 'half-closed'
  /** The console handshake (console-handshake.ts) failed after the client was answered. */
  | HandshakeFailure;

export interface PumpResult {
  readonly reason: CloseReason;
  readonly bytesToConsole: number;
  readonly bytesToClient: number;
}

export interface PumpOptions {
  /** 0 disables. */
  readonly idleTimeoutMs: number;
  /** After one side finished, how long the other gets to flush before it is destroyed. */
  readonly lingerMs?: number;
  /** After one side's FIN, how long the other direction may stay open (stream tunnels); 0 or unset: no bound. */
  readonly halfCloseMs?: number;
  /** Bytes on the console socket that were not the tunnel's (a hop's request and answer): not counted. */
  readonly preface?: { readonly written: number; readonly read: number };
}

/** The close code and reason a WebSocket client gets for each way a tunnel ends. */
export type WsCloseFor = (reason: CloseReason) => { code: number; message: string };

/** WebSocket sends in flight above this pause the console until they drain. */
const WS_HIGH_WATER = 1024 * 1024;
const WS_LOW_WATER = 256 * 1024;

export abstract class Pump {
  readonly done: Promise<PumpResult>;
  protected reason: CloseReason | undefined;
  private resolveDone!: (r: PumpResult) => void;

  protected constructor(
    protected readonly console: ConsoleStream,
    protected readonly opts: PumpOptions,
  ) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    console.on('error', () => this.fail('console-error'));
    // A handshake that failed after the client was answered says why before the console ends.
    console.on(HANDSHAKE_FAILED, (why: HandshakeFailure) => (this.reason ??= why));
    if (opts.idleTimeoutMs > 0) {
      console.setTimeout(opts.idleTimeoutMs, () => this.fail('idle'));
    }
  }

  /** Is the client leg away while the console is kept (a parked `oneport.v1` session)? */
  get parked(): boolean {
    return false;
  }

  /** End the tunnel now (shutdown, reroute, revocation, session time over). Idempotent. */
  abstract close(reason: CloseReason, message?: string): void;

  protected abstract destroyClient(): void;

  protected fail(reason: CloseReason): void {
    this.reason ??= reason;
    this.destroyClient();
    this.console.destroy();
    this.finish();
  }

  /**
   * Bytes relayed to the console so far, read live off the console socket (it sees every byte in
   * both directions), without a hop's own request and answer.
   */
  get bytesToConsole(): number {
    return Math.max(0, this.console.bytesWritten - (this.opts.preface?.written ?? 0));
  }

  /** Bytes relayed to the client so far (see bytesToConsole). */
  get bytesToClient(): number {
    return Math.max(0, this.console.bytesRead - (this.opts.preface?.read ?? 0));
  }

  protected finish(): void {
    this.resolveDone({ reason: this.reason ?? 'client-closed', bytesToConsole: this.bytesToConsole, bytesToClient: this.bytesToClient });
  }

  /** Half-close a side (unless it already finished writing), give it a moment to flush, then destroy it. */
  protected endAndLinger(socket: net.Socket | Duplex): void {
    if (!socket.writableEnded) socket.end();
    this.linger(socket);
  }

  /** Give a side that was told to end a moment to flush, then destroy it. */
  protected linger(socket: net.Socket | Duplex): void {
    const t = setTimeout(() => socket.destroy(), this.opts.lingerMs ?? 5000);
    t.unref();
    socket.once('close', () => clearTimeout(t));
  }
}

/** `from`'s end ends `to`'s writing side, also when `from` ended already (as pipe() does). */
function passEnd(from: Duplex, to: Duplex): void {
  if (from.readableEnded) process.nextTick(() => to.end());
  else from.on('end', () => to.end());
}

/** CONNECT tunnels: a stream socket on each side. */
export class StreamPump extends Pump {
  private clientClosed = false;
  private consoleClosed = false;

  constructor(
    private readonly client: net.Socket,
    console: ConsoleStream,
    opts: PumpOptions,
    /** Bytes the client sent along with its request, before the tunnel existed. */
    head?: Buffer,
  ) {
    super(console, opts);
    client.on('error', () => this.fail('client-error'));
    client.setNoDelay(true);
    if (head && head.length > 0) console.write(head);
    // What pipe() does both ways (write, pause on a full peer, resume on its drain, FIN passed
    // on), with four listeners instead of pipe()'s nine closures, two once-wrappers and a context
    // per direction: about 2.5 KiB of heap less per idle tunnel (bench, memory per idle tunnel).
    client.on('data', (chunk: Buffer) => {
      if (!console.write(chunk)) client.pause();
    });
    console.on('data', (chunk: Buffer) => {
      if (!client.write(chunk)) console.pause();
    });
    console.on('drain', () => client.resume());
    client.on('drain', () => console.resume());
    // Either may have been handed over paused (detection, a hop that read its answer): flow now,
    // unless the head already filled the console.
    if (!console.writableNeedDrain) client.resume();
    console.resume();
    client.on('end', () => {
      this.reason ??= 'client-closed';
      this.boundHalfClose();
    });
    console.on('end', () => {
      this.reason ??= 'console-closed';
      this.boundHalfClose();
    });
    // The FIN passed on, also for a side that ended before the pump existed (as pipe() does).
    passEnd(client, console);
    passEnd(console, client);
    client.on('close', () => {
      this.clientClosed = true;
      if (this.consoleClosed) this.finish();
      else this.endAndLinger(this.console);
    });
    console.on('close', () => {
      this.consoleClosed = true;
      if (this.clientClosed) this.finish();
      else this.endAndLinger(this.client);
    });
  }

  private halfCloseTimer: NodeJS.Timeout | undefined;

  /** The first FIN starts the clock: the other direction gets `halfCloseMs`, then both sides go. */
  private boundHalfClose(): void {
    const ms = this.opts.halfCloseMs ?? 0;
    if (ms <= 0 || this.halfCloseTimer !== undefined) return;
    this.halfCloseTimer = setTimeout(() => {
      this.reason = 'half-closed';
      this.fail('half-closed');
    }, ms);
    this.halfCloseTimer.unref();
    void this.done.then(() => clearTimeout(this.halfCloseTimer));
  }

  close(reason: CloseReason): void {
    this.reason ??= reason;
    this.client.destroy();
    this.console.destroy();
  }

  protected destroyClient(): void {
    this.client.destroy();
  }
}

/** WebSocket tunnels: binary messages on the client side (CONTRACT section 4). */
export class WebSocketPump extends Pump {
  private inFlight = 0;
  private consolePaused = false;
  private readonly wsCloseFor: WsCloseFor;
  private readonly judge: (() => Promise<CloseReason | undefined>) | undefined;
  /** A close reason text given by whoever ended the tunnel (a reroute names the new owner). */
  private closeMessage: string | undefined;

  constructor(
    private readonly ws: WebSocket,
    console: ConsoleStream,
    opts: PumpOptions & { readonly wsCloseFor: WsCloseFor; readonly judgeConsoleEnd?: (() => Promise<CloseReason | undefined>) | undefined },
    /** Messages the client sent while the console was being dialled. */
    queued: readonly Buffer[] = [],
  ) {
    super(console, opts);
    this.wsCloseFor = opts.wsCloseFor;
    this.judge = opts.judgeConsoleEnd;
    for (const b of queued) console.write(b);
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
      const chunk = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      if (!console.write(chunk)) {
        ws.pause();
        console.once('drain', () => ws.resume());
      }
    });
    console.on('data', (chunk: Buffer) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      this.inFlight += chunk.length;
      ws.send(chunk, { binary: true }, () => {
        this.inFlight -= chunk.length;
        if (this.consolePaused && this.inFlight <= WS_LOW_WATER) {
          this.consolePaused = false;
          console.resume();
        }
      });
      if (!this.consolePaused && this.inFlight > WS_HIGH_WATER) {
        this.consolePaused = true;
        console.pause();
      }
    });
    ws.on('error', () => this.fail('client-error'));
    ws.on('close', (code: number) => {
      this.reason ??= code === 1009 ? 'too-large' : 'client-closed';
      this.endAndLinger(this.console);
    });
    console.on('end', () => void this.consoleEnded());
    console.on('close', () => {
      void this.consoleEnded().then(() => {
        this.closeWs();
        this.finish();
      });
    });
    // A console socket handed over paused (a hop that read its response head) flows from here.
    console.resume();
  }

  private judging: Promise<void> | undefined;

  /**
   * The console leg ended without an error. Through a hop, that is also what the owner node's
   * death looks like (its sockets close cleanly): `judgeConsoleEnd` tells the two apart, so the
   * client hears "reconnect" (4001) rather than "normal end".
   */
  private consoleEnded(): Promise<void> {
    return (this.judging ??= (async () => {
      if (this.reason === undefined && this.judge) {
        const verdict = await this.judge().catch(() => undefined);
        this.reason ??= verdict;
      }
      this.reason ??= 'console-closed';
      this.closeWs();
    })());
  }

  private closeWs(): void {
    const { code, message } = this.wsCloseFor(this.reason ?? 'console-closed');
    closeWebSocket(this.ws, code, this.closeMessage ?? message, this.opts.lingerMs);
  }

  close(reason: CloseReason, message?: string): void {
    this.reason ??= reason;
    this.closeMessage = message;
    this.closeWs();
    this.console.destroy();
  }

  protected destroyClient(): void {
    if (this.reason === 'client-error') this.ws.terminate();
    else this.closeWs();
  }
}
