/**
 * A minimal RFB 3.8 client for tests (RFC 6143), over any byte stream: a net.Socket, a TLS
 * socket, or a WebSocket wrapped with `createWebSocketStream`. It speaks security type None,
 * asks for 32-bpp little-endian RGB and Raw encoding only, and reads full-screen frames.
 * Every read is bounded in size and has a deadline, so a broken server fails the test quickly
 * with a message saying what was expected, instead of hanging it or allocating gigabytes.
 */
import type { Duplex } from 'node:stream';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import jpeg from 'jpeg-js';
import { streamQueue } from './bytes.js';

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

/** Exactly `n` bytes from the stream (`what` names them in errors), or a rejection at the deadline. */
type Read = (n: number, what: string) => Promise<Buffer>;

/** Reads on `stream`'s queue (one per stream: bytes read ahead belong to the next call), all before `deadline` (a Date.now() value). */
function readerFor(stream: Duplex, deadline: number): Read {
  const q = streamQueue(stream);
  return (n, what) =>
    q.read(n, Math.max(0, deadline - Date.now()), what).catch((e: Error) => {
      throw new Error(`RFB: ${e.message}`, { cause: e });
    });
}

/** A U32 length followed by that many bytes of UTF-8 (RFC 6143 reason strings and the name). */
async function readString(read: Read, what: string): Promise<string> {
  const len = (await read(4, `${what} length`)).readUInt32BE(0);
  if (len > MAX_STRING) throw new Error(`RFB: ${what} of ${len} bytes is absurd`);
  return (await read(len, what)).toString('utf8');
}

/**
 * The 3.8 handshake with security None and ClientInit shared=1; then SetPixelFormat (32-bpp
 * little-endian true colour, red shift 16, green 8, blue 0) and SetEncodings [Raw].
 */
export async function rfbConnect(stream: Duplex, opts: Options = {}): Promise<RfbSession> {
  const read = readerFor(stream, Date.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS));

  const version = (await read(12, 'ProtocolVersion')).toString('latin1');
  const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(version);
  if (!m) throw new Error(`RFB: not an RFB server: ${JSON.stringify(version)}`);
  if (Number(m[1]) !== 3 || Number(m[2]) < 8) throw new Error(`RFB: server offers ${JSON.stringify(version)}; this client speaks 3.8 only`);
  stream.write('RFB 003.008\n');

  const count = (await read(1, 'number of security types'))[0]!;
  if (count === 0) throw new Error(`RFB: server refused the connection: ${await readString(read, 'failure reason')}`);
  const types = [...(await read(count, 'security types'))];
  if (!types.includes(1)) throw new Error(`RFB: server does not offer security type None; it offers ${types.join(', ')}`);
  stream.write(Buffer.from([1]));

  const result = (await read(4, 'SecurityResult')).readUInt32BE(0);
  if (result !== 0) throw new Error(`RFB: security handshake failed: ${await readString(read, 'failure reason')}`);
  stream.write(Buffer.from([1])); // ClientInit, shared

  // ServerInit: width, height and PIXEL_FORMAT (20 bytes), then the name as a U32-prefixed string.
  const init = await read(20, 'ServerInit');
  const width = init.readUInt16BE(0);
  const height = init.readUInt16BE(2);
  const name = await readString(read, 'desktop name');

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
  const read = readerFor(stream, Date.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS));
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
    const type = (await read(1, 'a server message type'))[0];
    if (type === 2) continue; // Bell
    if (type === 3) {
      const len = (await read(7, 'ServerCutText header')).readUInt32BE(3);
      if (len > MAX_CUT_TEXT) throw new Error(`RFB: ServerCutText of ${len} bytes is absurd`);
      await read(len, 'ServerCutText');
      continue;
    }
    if (type !== 0) throw new Error(`RFB: unexpected server message type ${type}`);
    const rects = (await read(3, 'FramebufferUpdate header')).readUInt16BE(1);
    for (let i = 0; i < rects; i++) {
      const h = await read(12, 'rectangle header');
      const x = h.readUInt16BE(0);
      const y = h.readUInt16BE(2);
      const w = h.readUInt16BE(4);
      const hh = h.readUInt16BE(6);
      const encoding = h.readInt32BE(8);
      if (encoding !== 0) throw new Error(`RFB: rectangle in encoding ${encoding}, but only Raw (0) was allowed`);
      if (x + w > width || y + hh > height) throw new Error(`RFB: rectangle ${w}x${hh}+${x}+${y} lies outside the ${width}x${height} screen`);
      const data = await read(w * hh * 4, `Raw pixels of a ${w}x${hh} rectangle`);
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

/** What vncsnapshot did: its exit code and output, and the picture it saved (when it did). */
export interface Snapshot {
  readonly code: number | null;
  readonly log: string;
  readonly width: number;
  readonly height: number;
  pixel(x: number, y: number): [number, number, number];
}

/**
 * vncsnapshot (a real VNC client nobody here wrote) against 127.0.0.1:<port>, within 30 s. It
 * takes a display number, port 5900 + N; `host::port` names any port.
 */
export async function vncsnapshot(t: { teardown(fn: () => unknown): void }, port: number): Promise<Snapshot> {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-snap-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'shot.jpg');
  const snap = spawn('vncsnapshot', ['-quiet', '-encodings', 'hextile raw', `127.0.0.1::${port}`, out], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  snap.stdout.on('data', (d: Buffer) => (log += d.toString()));
  snap.stderr.on('data', (d: Buffer) => (log += d.toString()));
  t.teardown(() => snap.kill('SIGKILL'));
  const [code] = (await once(snap, 'exit', { signal: AbortSignal.timeout(30_000) })) as [number | null];
  if (code !== 0) return { code, log, width: 0, height: 0, pixel: () => [0, 0, 0] };
  // vncsnapshot stores RGB samples without a colour-space marker; jpeg-js would assume YCbCr.
  const img = jpeg.decode(readFileSync(out), { useTArray: true, colorTransform: false });
  const pixel = (x: number, y: number): [number, number, number] => {
    const o = (y * img.width + x) * 4;
    return [img.data[o] ?? 0, img.data[o + 1] ?? 0, img.data[o + 2] ?? 0];
  };
  return { code, log, width: img.width, height: img.height, pixel };
}
