/**
 * The two ways an RD Gateway client carries MS-TSGU packets over HTTP (MS-TSGU 2.2.3.3):
 *
 * - `rdg-ws`: `RDG_OUT_DATA` upgraded to a WebSocket; packets ride in binary frames both ways
 *   (a packet may span frames, and a frame hold several: the stream is what counts).
 * - `rdg-http`: the legacy pair: the OUT request's response body carries the gateway's packets
 *   (chunked, after a 10-byte seed), the IN request's chunked body the client's.
 *
 * Both look the same to the tunnel: a byte stream from the client ('data'), packet writes to it
 * with backpressure (`write` returns false, then 'drain'), pause/resume of the client's side,
 * a graceful `end` and an abortive `destroy`, and one 'end' event (with why) when it is over.
 * Every length from the wire is bounded (frames, chunks); a client that stops answering pings or
 * breaks the framing is cut.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { type ChunkError, DEFAULT_MAX_CHUNK_BYTES, DEFAULT_MAX_PACKET_BYTES, encodePacket, parseChunk } from '../../protocols/tsgu.js';
import { type FrameError, Opcode, closePayload, encodeFrame, frameHeader, parseFrame } from '../../protocols/websocket-frame.js';

export type RdgTransportKind = 'rdg-ws' | 'rdg-http';

/** Why a transport ended: the client went away cleanly, failed, or broke the framing. */
export type TransportEnd = 'client-closed' | 'client-error' | 'too-large' | 'framing';

export interface RdgTransport extends EventEmitter {
  readonly kind: RdgTransportKind;
  /** Has it ended (either way)? */
  readonly ended: boolean;
  /** Write one whole packet; false: wait for 'drain' before writing more. */
  write(packet: Buffer): boolean;
  pause(): void;
  resume(): void;
  /** Finish what was written, say goodbye in the transport's words, then close. Idempotent. */
  end(): void;
  destroy(): void;
  on(event: 'data', listener: (chunk: Buffer) => void): this;
  on(event: 'end', listener: (why: TransportEnd) => void): this;
  on(event: 'drain', listener: () => void): this;
}

/** Writes above this on the client socket make write() say "wait". */
const HIGH_WATER = 1024 * 1024;
/** A side told to end gets this long to flush before it is destroyed. */
const LINGER_MS = 2000;

function linger(socket: Duplex): void {
  const t = setTimeout(() => socket.destroy(), LINGER_MS);
  t.unref();
  socket.once('close', () => clearTimeout(t));
}

/**
 * What both transports share: the client's framed bytes from `source` are kept in `pending`
 * (bounded by the framing: one frame or chunk at most, plus what one read brought) and unframed
 * by `unframe` while not paused.
 */
abstract class BaseTransport extends EventEmitter {
  private over = false;
  protected pending: Buffer = Buffer.alloc(0);
  protected paused = false;
  /** How many bytes the frame at the front of `pending` takes, when its header said so (else 0). */
  protected need = 0;
  /** Chunks that arrived while a frame known to be longer is incomplete: joined once, when it is whole. */
  private waiting: Buffer[] = [];
  private waitingBytes = 0;

  constructor(private readonly source: Duplex, rest: Buffer) {
    super();
    source.on('data', (chunk: Buffer) => {
      if (this.need > 0 && this.pending.length + this.waitingBytes + chunk.length < this.need) {
        this.waiting.push(chunk);
        this.waitingBytes += chunk.length;
        return;
      }
      this.pending = this.pending.length === 0 && this.waiting.length === 0 ? chunk : Buffer.concat([this.pending, ...this.waiting, chunk]);
      this.waiting = [];
      this.waitingBytes = 0;
      this.unframe();
    });
    if (rest.length > 0) {
      this.pending = rest;
      // After the caller had a chance to listen for 'data'.
      queueMicrotask(() => this.unframe());
    }
  }

  get ended(): boolean {
    return this.over;
  }

  pause(): void {
    this.paused = true;
    this.source.pause();
  }

  resume(): void {
    this.paused = false;
    this.source.resume();
    this.unframe();
  }

  /** Emit 'data' for every whole frame or chunk in `pending`, while not paused. */
  protected abstract unframe(): void;

  /** Emit 'end' once. */
  protected finish(why: TransportEnd): void {
    if (this.over) return;
    this.over = true;
    this.emit('end', why);
  }
}

export interface WebSocketTransportOptions {
  /** Largest frame payload taken from the client. */
  readonly maxFramePayload?: number;
  /** Ping this often; a client that did not answer the previous ping is cut. 0: never. */
  readonly pingIntervalMs: number;
}

/** A client that floods pings without reading gets this many pongs queued, then is cut. */
const MAX_QUEUED_PONGS = 60;

export class WebSocketTransport extends BaseTransport implements RdgTransport {
  readonly kind = 'rdg-ws' as const;
  private closeSent = false;
  private alive = true;
  private pongsQueued = 0;
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly maxPayload: number;

  constructor(private readonly socket: Duplex, rest: Buffer, opts: WebSocketTransportOptions) {
    super(socket, rest);
    this.maxPayload = opts.maxFramePayload ?? DEFAULT_MAX_PACKET_BYTES;
    socket.on('drain', () => {
      this.pongsQueued = 0;
      this.emit('drain');
    });
    socket.on('end', () => {
      this.finish('client-closed');
      socket.end();
    });
    socket.on('close', () => this.finish('client-closed'));
    socket.on('error', () => {
      this.finish('client-error');
      socket.destroy();
    });
    if (opts.pingIntervalMs > 0) {
      this.timer = setInterval(() => {
        if (!this.alive) {
          this.finish('client-error');
          socket.destroy();
          return;
        }
        this.alive = false;
        socket.write(encodeFrame(Opcode.PING));
      }, opts.pingIntervalMs);
      this.timer.unref();
      socket.once('close', () => clearInterval(this.timer));
    }
  }

  write(packet: Buffer): boolean {
    if (this.closeSent || this.socket.destroyed) return true;
    // Header and packet as two writes in one batch: the packet is not copied again.
    this.socket.cork();
    this.socket.write(frameHeader(Opcode.BINARY, packet.length));
    this.socket.write(packet);
    this.socket.uncork();
    return this.socket.writableLength < HIGH_WATER;
  }

  end(): void {
    this.sendClose(1000);
  }

  destroy(): void {
    this.finish('client-error');
    this.socket.destroy();
  }

  private sendClose(code: number, reason = ''): void {
    if (!this.closeSent && !this.socket.destroyed) {
      this.closeSent = true;
      this.socket.end(encodeFrame(Opcode.CLOSE, closePayload(code, reason)));
      linger(this.socket);
    }
  }

  protected unframe(): void {
    while (!this.paused && this.pending.length > 0 && !this.socket.destroyed) {
      const f = parseFrame(this.pending, this.maxPayload);
      if (f.kind === 'more') {
        this.need = f.need ?? 0;
        return;
      }
      this.need = 0;
      if (f.kind === 'error') {
        this.refuseFraming(f.code);
        return;
      }
      this.pending = this.pending.subarray(f.length);
      const { opcode, payload } = f.value;
      switch (opcode) {
        case Opcode.BINARY:
        case Opcode.CONTINUATION:
          if (payload.length > 0 && !this.closeSent) this.emit('data', payload);
          break;
        case Opcode.TEXT:
          this.refuseFraming('bad-opcode');
          return;
        case Opcode.PING:
          if (++this.pongsQueued > MAX_QUEUED_PONGS && this.socket.writableLength > 0) {
            this.destroy();
            return;
          }
          if (!this.closeSent) this.socket.write(encodeFrame(Opcode.PONG, payload));
          break;
        case Opcode.PONG:
          // FreeRDP 2.11 answers a close with a pong frame (rdg_websocket_reply_close): also fine.
          this.alive = true;
          break;
        case Opcode.CLOSE:
          this.finish('client-closed');
          this.sendClose(payload.length >= 2 ? payload.readUInt16BE(0) : 1000);
          return;
      }
    }
  }

  private refuseFraming(code: FrameError): void {
    this.finish(code === 'payload-too-large' ? 'too-large' : 'framing');
    this.sendClose(code === 'payload-too-large' ? 1009 : code === 'bad-opcode' ? 1003 : 1002, code);
  }
}

export interface LegacyTransportOptions {
  /** Send an MS-TSGU keep-alive this often (0: never); FreeRDP answers each with one. */
  readonly keepAliveMs: number;
  readonly maxChunkBytes?: number;
}

/** The 10 bytes an RD Gateway sends first in the OUT response's body (MS-TSGU 3.3.5.1). */
export const SEED_LENGTH = 10;

/**
 * The legacy pair, once both requests are in: the OUT socket already carries our 200 and the
 * seed; every packet goes out as one chunk. The IN request's body arrives chunked.
 */
export class LegacyTransport extends BaseTransport implements RdgTransport {
  readonly kind = 'rdg-http' as const;
  private ending = false;
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly maxChunk: number;

  constructor(private readonly out: Duplex, private readonly inbound: Duplex, rest: Buffer, opts: LegacyTransportOptions) {
    super(inbound, rest);
    this.maxChunk = opts.maxChunkBytes ?? DEFAULT_MAX_CHUNK_BYTES;
    out.on('drain', () => this.emit('drain'));
    for (const s of [out, inbound]) {
      s.on('end', () => {
        this.finish('client-closed');
        this.close();
      });
      s.on('close', () => {
        this.finish('client-closed');
        this.close();
      });
      s.on('error', () => {
        this.finish('client-error');
        this.destroy();
      });
    }
    // The client sends nothing on OUT after its request: anything there is ignored, not buffered.
    out.on('data', () => undefined);
    if (opts.keepAliveMs > 0) {
      this.timer = setInterval(() => this.write(encodePacket({ type: 'keepalive' })), opts.keepAliveMs);
      this.timer.unref();
      out.once('close', () => clearInterval(this.timer));
    }
  }

  write(packet: Buffer): boolean {
    if (this.ending || this.out.destroyed) return true;
    this.out.cork();
    this.out.write(`${packet.length.toString(16)}\r\n`, 'latin1');
    this.out.write(packet);
    this.out.write(CRLF);
    this.out.uncork();
    return this.out.writableLength < HIGH_WATER;
  }

  /** The last chunk on OUT, then both requests are done. */
  end(): void {
    if (this.ending) return;
    this.ending = true;
    if (!this.out.destroyed) this.out.end(LAST_CHUNK);
    this.inbound.end();
    linger(this.out);
    linger(this.inbound);
  }

  destroy(): void {
    this.finish('client-error');
    this.out.destroy();
    this.inbound.destroy();
  }

  private close(): void {
    if (this.ending) return;
    this.end();
  }

  protected unframe(): void {
    while (!this.paused && this.pending.length > 0 && !this.inbound.destroyed) {
      const c = parseChunk(this.pending, this.maxChunk);
      if (c.kind === 'more') return;
      if (c.kind === 'error') {
        this.refuseFraming(c.code);
        return;
      }
      this.pending = this.pending.subarray(c.length);
      if (c.value.last) {
        this.finish('client-closed');
        this.close();
        return;
      }
      if (c.value.data.length > 0) this.emit('data', Buffer.from(c.value.data));
    }
  }

  private refuseFraming(code: ChunkError): void {
    this.finish(code === 'chunk-too-large' ? 'too-large' : 'framing');
    this.destroy();
  }
}

const CRLF = Buffer.from('\r\n', 'latin1');
const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1');
