/**
 * Reading exact byte counts from something that delivers chunks (a socket, a TLS socket, a
 * WebSocket's messages): a plain queue with one pending reader at a time, free of any transport
 * (`ByteQueue`), and `streamQueue`, which feeds one from a stream with backpressure. Every wait
 * has a deadline and says what it was waiting for, so a broken peer fails a test quickly instead
 * of hanging it. Used by the RFB test client, the RFB server's unit test and the benchmark's
 * load clients.
 *
 * Streams are read in flowing mode ('data'): paused-mode `socket.read(n)` plus awaiting
 * 'readable' spins on process.nextTick in Node 20 while fewer than n bytes are buffered,
 * starving the event loop.
 */
import type { Duplex } from 'node:stream';

interface Waiter {
  readonly n: number;
  readonly what: string;
  readonly resolve: (b: Buffer) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface Skipper {
  left: number;
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** Bytes in arrival order; one pending read (or discard, or rest) at a time. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiter: Waiter | undefined;
  private skipping: Skipper | undefined;
  private endedWith: Error | undefined;

  /** @param onWait called whenever a read has to wait for more bytes (e.g. to resume a paused stream). */
  constructor(private readonly onWait: () => void = () => {}) {}

  /** Bytes queued and not read yet. */
  get length(): number {
    return this.size;
  }

  /** Is a read waiting for more bytes than are queued? */
  get waiting(): boolean {
    return this.waiter !== undefined || this.skipping !== undefined;
  }

  push(chunk: Buffer): void {
    const k = this.skipping;
    if (k) {
      const used = Math.min(k.left, chunk.length);
      k.left -= used;
      if (k.left === 0) {
        this.skipping = undefined;
        clearTimeout(k.timer);
        k.resolve();
      }
      if (used === chunk.length) return;
      chunk = chunk.subarray(used);
    }
    this.chunks.push(chunk);
    this.size += chunk.length;
    this.serve();
  }

  /**
   * No more bytes will come: what is queued can still be read, a read wanting more fails with
   * `reason`. The first reason given stands.
   */
  end(reason: Error): void {
    this.endedWith ??= reason;
    const k = this.skipping;
    if (k) {
      this.skipping = undefined;
      clearTimeout(k.timer);
      k.reject(reason);
    }
    this.serve();
  }

  /** Exactly `n` bytes, once they are here; `what` names them in errors. */
  read(n: number, timeoutMs: number, what = `${n} bytes`): Promise<Buffer> {
    if (this.waiting) return Promise.reject(new Error(`concurrent reads (while waiting for ${what})`));
    if (this.size >= n) return Promise.resolve(this.take(n));
    if (this.endedWith) return Promise.reject(this.endedError(what, n));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`timed out waiting for ${what} (${this.progress(n)} after ${timeoutMs} ms)`));
      }, timeoutMs);
      this.waiter = { n, what, resolve, reject, timer };
      this.onWait();
    });
  }

  /** Count off `n` bytes (those already queued first) without keeping them. */
  discard(n: number, timeoutMs: number): Promise<void> {
    if (this.waiting) return Promise.reject(new Error('concurrent reads'));
    const queued = Math.min(n, this.size);
    if (queued > 0) this.take(queued);
    const left = n - queued;
    if (left === 0) return Promise.resolve();
    if (this.endedWith) return Promise.reject(this.endedWith);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const k = this.skipping;
        this.skipping = undefined;
        reject(new Error(`timed out after ${timeoutMs} ms with ${k?.left ?? '?'} of ${n} bytes still to come`));
      }, timeoutMs);
      this.skipping = { left, resolve, reject, timer };
      this.onWait();
    });
  }

  /** Everything up to the end (see `end`), once it came. */
  rest(timeoutMs: number): Promise<Buffer> {
    return this.read(Number.POSITIVE_INFINITY, timeoutMs, 'the end').catch((err: unknown) => {
      if (this.endedWith && err instanceof Error && err.cause === this.endedWith) return this.take(this.size);
      throw err;
    });
  }

  private endedError(what: string, n: number): Error {
    const reason = this.endedWith as Error;
    return new Error(`${reason.message} while waiting for ${what} (${this.progress(n)})`, { cause: reason });
  }

  private progress(n: number): string {
    return Number.isFinite(n) ? `${this.size} of ${n} bytes` : `${this.size} bytes so far`;
  }

  private serve(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.size >= w.n) {
      this.waiter = undefined;
      clearTimeout(w.timer);
      w.resolve(this.take(w.n));
    } else if (this.endedWith) {
      this.waiter = undefined;
      clearTimeout(w.timer);
      w.reject(this.endedError(w.what, w.n));
    }
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks, this.size);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.size = rest.length;
    return out;
  }
}

/** Stop taking data from a stream when this much sits unread and nobody asked for it, so a chatty peer cannot fill memory. */
const HIGH_WATER = 4 * 1024 * 1024;

const queues = new WeakMap<Duplex, ByteQueue>();

/**
 * The queue fed by `stream`, one per stream for its lifetime (bytes read ahead by one caller
 * belong to the next). The stream is paused past 4 MiB unread and resumed when a read waits; the
 * queue ends when the stream ends, closes or fails.
 */
export function streamQueue(stream: Duplex): ByteQueue {
  let q = queues.get(stream);
  if (q) return q;
  const queue = new ByteQueue(() => stream.resume());
  stream.on('data', (d: Buffer) => {
    queue.push(d);
    if (queue.length >= HIGH_WATER && !queue.waiting) stream.pause();
  });
  stream.on('end', () => queue.end(new Error('the stream ended')));
  stream.on('close', () => queue.end(new Error('the stream closed')));
  stream.on('error', (e: Error) => queue.end(new Error(`stream error: ${e.message}`, { cause: e })));
  queues.set(stream, (q = queue));
  return q;
}
