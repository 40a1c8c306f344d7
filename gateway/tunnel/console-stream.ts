/**
 * What a pump splices a client leg to: the console socket itself, or an `OpeningStream` in front
 * of it while the console handshake (console-handshake.ts) still has bytes to check or rewrite
 * after the client was answered: the gateway's own RFB security offer, a SPICE ticket swapped
 * for one made from the console's password, a client's first bytes checked against the declared
 * protocol. The pumps cannot tell the two apart; once the opening is done every chunk passes
 * straight through.
 *
 * Bounded: an opening holds at most what its parsers cap (protocols/), and the whole opening has
 * one deadline. A failure ends the stream like a console that closed, after telling the pump why
 * (`HANDSHAKE_FAILED`), so each leg ends in its own words (a close code, a closed CONNECT).
 */
import type net from 'node:net';
import { Duplex } from 'node:stream';
import type { ErrorCode } from '../errors.js';

/** The parts of a console socket the pumps use. */
export type ConsoleStream = Duplex & Pick<net.Socket, 'bytesRead' | 'bytesWritten'> & { setTimeout(ms: number, cb?: () => void): unknown };

/** Who broke the opening: the console refused the stored credentials, or a side spoke another protocol (or nothing in time). */
export type HandshakeFailure = 'console-auth' | 'console-protocol' | 'client-protocol';

/** The error code of each failure: the refusal before the client is answered, the close code after. */
export const HANDSHAKE_ERROR = {
  'console-auth': 'ONEPORT_ERR_CONSOLE_AUTH',
  'console-protocol': 'ONEPORT_ERR_CONSOLE_PROTOCOL',
  'client-protocol': 'ONEPORT_ERR_CLIENT_PROTOCOL',
} as const satisfies Readonly<Record<HandshakeFailure, ErrorCode>>;

/** Emitted by an OpeningStream with the HandshakeFailure, just before it ends. */
export const HANDSHAKE_FAILED = 'oneport:handshake-failed';

/** One move of an opening: bytes to send each way, then maybe its end. */
export interface OpeningStep {
  readonly toConsole?: readonly Buffer[];
  readonly toClient?: readonly Buffer[];
  /** 'done': from here on bytes pass through; a failure ends the tunnel (after toClient is sent). */
  readonly outcome?: 'done' | { readonly failure: HandshakeFailure; readonly detail: string };
}

/** The in-stream part of a console handshake: a pure state machine over each side's bytes. */
export interface Opening {
  /** Bytes the client gets before anything else (the gateway's own RFB banner). */
  start(): OpeningStep;
  fromClient(chunk: Buffer): OpeningStep;
  fromConsole(chunk: Buffer): OpeningStep;
  /** Whose bytes it waits for: who is blamed when the deadline passes. */
  waitingFor(): 'client' | 'console';
}

export interface OpeningResult {
  readonly failure?: HandshakeFailure;
  readonly detail?: string;
}

export class OpeningStream extends Duplex implements ConsoleStream {
  private opening: Opening | undefined;
  private failed = false;
  private realEnded = false;
  private realPaused = false;
  private written = 0;
  private read_ = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly real: ConsoleStream,
    opening: Opening,
    private readonly opts: { readonly timeoutMs: number; readonly onEnd: (r: OpeningResult) => void },
  ) {
    super({ allowHalfOpen: true });
    this.opening = opening;
    this.timer = setTimeout(() => {
      const side = this.opening?.waitingFor() ?? 'console';
      this.fail(side === 'client' ? 'client-protocol' : 'console-protocol', `the ${side} sent nothing usable within ${opts.timeoutMs} ms`);
    }, opts.timeoutMs);
    this.timer.unref();
    real.on('data', (chunk: Buffer) => {
      if (this.failed) return;
      if (this.opening) this.apply(this.opening.fromConsole(chunk));
      else this.toClient(chunk);
    });
    real.on('end', () => {
      this.realEnded = true;
      if (this.failed) return;
      if (this.opening) this.fail('console-protocol', 'the console closed during the handshake');
      else this.push(null);
    });
    real.on('error', (e) => this.destroy(e));
    real.on('close', () => {
      // Let the reader take what the console sent before it closed, as a socket would.
      if (this.realEnded && !this.readableEnded) this.once('end', () => this.destroy());
      else this.destroy();
    });
    this.apply(opening.start());
    // The handshake's reader left the socket paused; from here this stream decides when it flows.
    real.resume();
  }

  get bytesWritten(): number {
    return this.written;
  }

  get bytesRead(): number {
    return this.read_;
  }

  setTimeout(ms: number, cb?: () => void): void {
    // The console socket sees every byte both ways, so its idle timer is the tunnel's.
    this.real.setTimeout(ms, cb);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.written += chunk.length;
    if (this.failed) return cb();
    if (this.opening) {
      this.apply(this.opening.fromClient(chunk));
      return cb();
    }
    if (this.real.write(chunk)) cb();
    else this.real.once('drain', () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.real.end();
    cb();
  }

  override _read(): void {
    if (this.realPaused) {
      this.realPaused = false;
      this.real.resume();
    }
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    clearTimeout(this.timer);
    this.real.destroy();
    cb(e);
  }

  private toClient(b: Buffer): void {
    if (b.length === 0) return;
    this.read_ += b.length;
    if (!this.push(b) && !this.realPaused) {
      this.realPaused = true;
      this.real.pause();
    }
  }

  private apply(step: OpeningStep): void {
    for (const b of step.toClient ?? []) this.toClient(b);
    for (const b of step.toConsole ?? []) if (b.length > 0) this.real.write(b);
    const outcome = step.outcome;
    if (outcome === undefined) return;
    if (outcome === 'done') {
      this.opening = undefined;
      clearTimeout(this.timer);
      this.opts.onEnd({});
      return;
    }
    this.fail(outcome.failure, outcome.detail);
  }

  /** End like a console that closed, having told the pump why (it picks the close code). */
  private fail(failure: HandshakeFailure, detail: string): void {
    if (this.failed || this.destroyed) return;
    this.failed = true;
    this.opening = undefined;
    clearTimeout(this.timer);
    this.opts.onEnd({ failure, detail });
    this.emit(HANDSHAKE_FAILED, failure);
    this.push(null);
    this.realEnded = true;
    this.real.destroy();
  }
}
