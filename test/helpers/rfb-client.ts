/**
 * A minimal RFB 3.8 client for tests (RFC 6143), over any byte stream: a socket, a TLS socket,
 * or a WebSocket wrapped with `createWebSocketStream`. Security None, 32-bpp little-endian RGB,
 * Raw encoding. Every read is bounded in size and time.
 */
import type { Duplex } from 'node:stream';

export interface RfbSession {
  version: string;
  width: number;
  height: number;
  name: string;
}

const MAX_NAME = 4096;

/** Reads exact byte counts from a stream, with a deadline per read. */
class Reader {
  private buf = Buffer.alloc(0);
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  private ended: Error | undefined;

  constructor(private readonly stream: Duplex) {
    stream.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.pump();
    });
    const end = (): void => this.fail(new Error('stream ended'));
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', (e: Error) => this.fail(e));
  }

  private fail(e: Error): void {
    this.ended ??= e;
    const w = this.waiting;
    if (w && this.buf.length < w.n) {
      this.waiting = undefined;
      clearTimeout(w.timer);
      w.reject(e);
    }
  }

  private pump(): void {
    const w = this.waiting;
    if (w && this.buf.length >= w.n) {
      this.waiting = undefined;
      clearTimeout(w.timer);
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(out);
    }
  }

  read(n: number, timeoutMs: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`RFB: timed out waiting for ${n} bytes`));
      }, timeoutMs);
      this.waiting = { n, resolve, reject, timer };
      this.pump();
      if (this.waiting && this.ended) this.fail(this.ended);
    });
  }
}

const readers = new WeakMap<Duplex, Reader>();
function reader(stream: Duplex): Reader {
  let r = readers.get(stream);
  if (!r) readers.set(stream, (r = new Reader(stream)));
  return r;
}

export async function rfbConnect(stream: Duplex, opts: { timeoutMs?: number } = {}): Promise<RfbSession> {
  const ms = opts.timeoutMs ?? 10_000;
  const r = reader(stream);
  const version = (await r.read(12, ms)).toString('latin1');
  if (!/^RFB 003\.\d{3}\n$/.test(version)) throw new Error(`RFB: bad version ${JSON.stringify(version)}`);
  stream.write('RFB 003.008\n');
  const count = (await r.read(1, ms))[0] ?? 0;
  if (count === 0) {
    const len = (await r.read(4, ms)).readUInt32BE(0);
    throw new Error(`RFB: server refused: ${(await r.read(Math.min(len, MAX_NAME), ms)).toString('utf8')}`);
  }
  const types = [...(await r.read(count, ms))];
  if (!types.includes(1)) throw new Error(`RFB: no security type None in ${types}`);
  stream.write(Buffer.from([1]));
  const result = (await r.read(4, ms)).readUInt32BE(0);
  if (result !== 0) throw new Error('RFB: security handshake failed');
  stream.write(Buffer.from([1])); // shared
  const init = await r.read(24, ms);
  const nameLength = init.readUInt32BE(20);
  if (nameLength > MAX_NAME) throw new Error('RFB: desktop name too long');
  const name = (await r.read(nameLength, ms)).toString('utf8');
  const setFormat = Buffer.alloc(20);
  setFormat.writeUInt8(0, 0);
  setFormat.writeUInt8(32, 4);
  setFormat.writeUInt8(24, 5);
  setFormat.writeUInt8(0, 6);
  setFormat.writeUInt8(1, 7);
  setFormat.writeUInt16BE(255, 8);
  setFormat.writeUInt16BE(255, 10);
  setFormat.writeUInt16BE(255, 12);
  setFormat.writeUInt8(16, 14);
  setFormat.writeUInt8(8, 15);
  setFormat.writeUInt8(0, 16);
  const setEncodings = Buffer.from([2, 0, 0, 1, 0, 0, 0, 0]);
  stream.write(Buffer.concat([setFormat, setEncodings]));
  return { version, width: init.readUInt16BE(0), height: init.readUInt16BE(2), name };
}

/** A full-screen, non-incremental update; returns width*height*4 bytes (BGRX). */
export async function rfbRequestFrame(stream: Duplex, s: RfbSession, opts: { timeoutMs?: number } = {}): Promise<Buffer> {
  const ms = opts.timeoutMs ?? 10_000;
  const r = reader(stream);
  const req = Buffer.alloc(10);
  req.writeUInt8(3, 0);
  req.writeUInt8(0, 1);
  req.writeUInt16BE(s.width, 6);
  req.writeUInt16BE(s.height, 8);
  stream.write(req);
  const frame = Buffer.alloc(s.width * s.height * 4);
  for (;;) {
    const type = (await r.read(1, ms))[0];
    if (type === 2) continue; // Bell
    if (type !== 0) throw new Error(`RFB: unexpected message ${type}`);
    const rects = (await r.read(3, ms)).readUInt16BE(1);
    for (let i = 0; i < rects; i++) {
      const h = await r.read(12, ms);
      const [x, y, w, hh, enc] = [h.readUInt16BE(0), h.readUInt16BE(2), h.readUInt16BE(4), h.readUInt16BE(6), h.readInt32BE(8)];
      if (enc !== 0) throw new Error(`RFB: unexpected encoding ${enc}`);
      if (x + w > s.width || y + hh > s.height) throw new Error('RFB: rectangle outside the screen');
      const data = await r.read(w * hh * 4, ms);
      for (let row = 0; row < hh; row++) data.copy(frame, ((y + row) * s.width + x) * 4, row * w * 4, (row + 1) * w * 4);
    }
    return frame;
  }
}

export function pixelAt(frame: Buffer, s: RfbSession, x: number, y: number): [number, number, number] {
  const o = (y * s.width + x) * 4;
  return [frame[o + 2] ?? 0, frame[o + 1] ?? 0, frame[o] ?? 0];
}
