/**
 * A minimal RFB 3.8 client for tests (RFC 6143), over any byte stream: a net.Socket, a TLS
 * socket, or a WebSocket wrapped with `createWebSocketStream`. It speaks security type None,
 * asks for 32-bpp little-endian RGB and Raw encoding only, and reads full-screen frames.
 * Every read is bounded in size and has a deadline, so a broken server fails the test quickly
 * with a message saying what was expected, instead of hanging it or allocating gigabytes.
 */
import type { Duplex } from 'node:stream';

export interface RfbSession {
  /** The server's ProtocolVersion line, e.g. "RFB 003.008\n". */
  version: string;
  width: number;
  height: number;
  name: string;
}

interface Options {
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_STRING = 64 * 1024;
const MAX_CUT_TEXT = 16 * 1024 * 1024;
// Stop taking data from the stream when this much sits unread, so a chatty server cannot fill memory.
const HIGH_WATER = 4 * 1024 * 1024;

/** Reads exact byte counts from a stream, buffering what arrives between reads. */
class Reader {
  private chunks: Buffer[] = [];
  private length = 0;
  private closed: Error | undefined;
  private waiter: { n: number; what: string; resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;

  constructor(private readonly stream: Duplex) {
    stream.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.length += d.length;
      if (this.length >= HIGH_WATER && (!this.waiter || this.waiter.n <= this.length)) stream.pause();
      this.settle();
    });
    stream.on('end', () => this.close(new Error('RFB: the stream ended')));
    stream.on('close', () => this.close(new Error('RFB: the stream closed')));
    stream.on('error', (e: Error) => this.close(new Error(`RFB: stream error: ${e.message}`, { cause: e })));
  }

  private close(e: Error): void {
    this.closed ??= e;
    this.settle();
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return out;
  }

  private settle(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.length >= w.n) {
      this.waiter = undefined;
      clearTimeout(w.timer);
      w.resolve(this.take(w.n));
    } else if (this.closed) {
      this.waiter = undefined;
      clearTimeout(w.timer);
      w.reject(new Error(`${this.closed.message} while waiting for ${w.what} (${this.length} of ${w.n} bytes)`, { cause: this.closed }));
    }
  }

  /** Exactly `n` bytes, or a rejection when `deadline` (a Date.now() value) passes first. */
  read(n: number, deadline: number, what: string): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('RFB: concurrent reads on one stream'));
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.waiter = undefined;
          reject(new Error(`RFB: timed out waiting for ${what} (${this.length} of ${n} bytes)`));
        },
        Math.max(0, deadline - Date.now()),
      );
      this.waiter = { n, what, resolve, reject, timer };
      if (this.length < n) this.stream.resume();
      this.settle();
    });
  }
}

const readers = new WeakMap<Duplex, Reader>();

/** One reader per stream, for its lifetime: bytes read ahead by one call belong to the next. */
function readerFor(stream: Duplex): Reader {
  let r = readers.get(stream);
  if (!r) {
    r = new Reader(stream);
    readers.set(stream, r);
  }
  return r;
}

/** A U32 length followed by that many bytes of UTF-8 (RFC 6143 reason strings and the name). */
async function readString(r: Reader, deadline: number, what: string): Promise<string> {
  const len = (await r.read(4, deadline, `${what} length`)).readUInt32BE(0);
  if (len > MAX_STRING) throw new Error(`RFB: ${what} of ${len} bytes is absurd`);
  return (await r.read(len, deadline, what)).toString('utf8');
}

/**
 * The 3.8 handshake with security None and ClientInit shared=1; then SetPixelFormat (32-bpp
 * little-endian true colour, red shift 16, green 8, blue 0) and SetEncodings [Raw].
 */
export async function rfbConnect(stream: Duplex, opts: Options = {}): Promise<RfbSession> {
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const r = readerFor(stream);

  const version = (await r.read(12, deadline, 'ProtocolVersion')).toString('latin1');
  const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(version);
  if (!m) throw new Error(`RFB: not an RFB server: ${JSON.stringify(version)}`);
  if (Number(m[1]) !== 3 || Number(m[2]) < 8) throw new Error(`RFB: server offers ${JSON.stringify(version)}; this client speaks 3.8 only`);
  stream.write('RFB 003.008\n');

  const count = (await r.read(1, deadline, 'number of security types'))[0]!;
  if (count === 0) throw new Error(`RFB: server refused the connection: ${await readString(r, deadline, 'failure reason')}`);
  const types = [...(await r.read(count, deadline, 'security types'))];
  if (!types.includes(1)) throw new Error(`RFB: server does not offer security type None; it offers ${types.join(', ')}`);
  stream.write(Buffer.from([1]));

  const result = (await r.read(4, deadline, 'SecurityResult')).readUInt32BE(0);
  if (result !== 0) throw new Error(`RFB: security handshake failed: ${await readString(r, deadline, 'failure reason')}`);
  stream.write(Buffer.from([1])); // ClientInit, shared

  // ServerInit: width, height and PIXEL_FORMAT (20 bytes), then the name as a U32-prefixed string.
  const init = await r.read(20, deadline, 'ServerInit');
  const width = init.readUInt16BE(0);
  const height = init.readUInt16BE(2);
  const name = await readString(r, deadline, 'desktop name');

  const setPixelFormat = Buffer.alloc(20); // type 0, 3 bytes padding, then PIXEL_FORMAT
  setPixelFormat.writeUInt8(32, 4); // bits per pixel
  setPixelFormat.writeUInt8(24, 5); // depth
  setPixelFormat.writeUInt8(0, 6); // little-endian
  setPixelFormat.writeUInt8(1, 7); // true colour
  setPixelFormat.writeUInt16BE(255, 8);
  setPixelFormat.writeUInt16BE(255, 10);
  setPixelFormat.writeUInt16BE(255, 12);
  setPixelFormat.writeUInt8(16, 14);
  setPixelFormat.writeUInt8(8, 15);
  setPixelFormat.writeUInt8(0, 16);
  const setEncodings = Buffer.from([2, 0, 0, 1, 0, 0, 0, 0]); // one encoding: Raw (0)
  stream.write(Buffer.concat([setPixelFormat, setEncodings]));

  return { version, width, height, name };
}

/**
 * A non-incremental full-screen FramebufferUpdateRequest, read until every pixel has arrived.
 * Returns width*height*4 bytes as received: little-endian 32 bpp, so B, G, R, padding per pixel.
 */
export async function rfbRequestFrame(stream: Duplex, session: RfbSession, opts: Options = {}): Promise<Buffer> {
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const r = readerFor(stream);
  const { width, height } = session;
  const req = Buffer.alloc(10);
  req.writeUInt8(3, 0);
  req.writeUInt8(0, 1); // not incremental
  req.writeUInt16BE(width, 6);
  req.writeUInt16BE(height, 8);
  stream.write(req);

  const frame = Buffer.alloc(width * height * 4);
  // A server may answer in several updates; the frame is done when every pixel was painted.
  const painted = new Uint8Array(width * height);
  let missing = width * height;
  while (missing > 0) {
    const type = (await r.read(1, deadline, 'a server message type'))[0];
    if (type === 2) continue; // Bell
    if (type === 3) {
      const len = (await r.read(7, deadline, 'ServerCutText header')).readUInt32BE(3);
      if (len > MAX_CUT_TEXT) throw new Error(`RFB: ServerCutText of ${len} bytes is absurd`);
      await r.read(len, deadline, 'ServerCutText');
      continue;
    }
    if (type !== 0) throw new Error(`RFB: unexpected server message type ${type}`);
    const rects = (await r.read(3, deadline, 'FramebufferUpdate header')).readUInt16BE(1);
    for (let i = 0; i < rects; i++) {
      const h = await r.read(12, deadline, 'rectangle header');
      const x = h.readUInt16BE(0);
      const y = h.readUInt16BE(2);
      const w = h.readUInt16BE(4);
      const hh = h.readUInt16BE(6);
      const encoding = h.readInt32BE(8);
      if (encoding !== 0) throw new Error(`RFB: rectangle in encoding ${encoding}, but only Raw (0) was allowed`);
      if (x + w > width || y + hh > height) throw new Error(`RFB: rectangle ${w}x${hh}+${x}+${y} lies outside the ${width}x${height} screen`);
      const data = await r.read(w * hh * 4, deadline, `Raw pixels of a ${w}x${hh} rectangle`);
      for (let row = 0; row < hh; row++) {
        data.copy(frame, ((y + row) * width + x) * 4, row * w * 4, (row + 1) * w * 4);
        for (let p = (y + row) * width + x, end = p + w; p < end; p++) {
          if (!painted[p]) {
            painted[p] = 1;
            missing--;
          }
        }
      }
    }
  }
  return frame;
}

/** The [R, G, B] of pixel (x, y) of a frame from `rfbRequestFrame`. */
export function pixelAt(frame: Buffer, session: RfbSession, x: number, y: number): [number, number, number] {
  if (!Number.isInteger(x) || !Number.isInteger(y) || x < 0 || y < 0 || x >= session.width || y >= session.height) {
    throw new RangeError(`pixel (${x}, ${y}) is outside the ${session.width}x${session.height} screen`);
  }
  const o = (y * session.width + x) * 4;
  return [frame[o + 2]!, frame[o + 1]!, frame[o]!];
}
