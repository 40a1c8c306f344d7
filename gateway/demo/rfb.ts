/**
 * A small RFB 3.8 server (RFC 6143): the gateway's built-in demo desktop, and a test fixture.
 *
 * It shows a fixed, deterministic picture (colour bars over a grey ramp, or a solid fill) and
 * implements:
 *   - the handshake: ProtocolVersion (7.1.1) for clients answering 3.3, 3.7 or 3.8; security
 *     type None only (7.1.2, 7.2.1); SecurityResult for 3.8 (7.1.3); ClientInit and ServerInit
 *     (7.3.1, 7.3.2) with a 32-bpp little-endian true-colour pixel format (7.4);
 *   - client messages (7.5): SetPixelFormat for any true-colour format of 8, 16 or 32 bits per
 *     pixel (7.5.1), SetEncodings (7.5.2), FramebufferUpdateRequest (7.5.3), and KeyEvent,
 *     PointerEvent and ClientCutText, which are read and ignored (7.5.4 - 7.5.6);
 *   - server messages (7.6): FramebufferUpdate (7.6.1) with Raw rectangles only (7.7.1), which
 *     every client must accept whatever it lists in SetEncodings.
 * No colour maps, no other encodings, no authentication: the gateway in front does the access
 * control, and this server only ever listens on loopback by default.
 */
import net from 'node:net';

export interface RfbServerOptions {
  /** Default '127.0.0.1'. */
  host?: string;
  /** Default 0 (an ephemeral port). */
  port?: number;
  /** Default 640. */
  width?: number;
  /** Default 480. */
  height?: number;
  /** The desktop name in ServerInit; default 'oneport demo'. */
  name?: string;
  /** A solid RGB colour instead of the test pattern. */
  fill?: readonly [number, number, number];
}

export interface RfbServer {
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Stops listening and destroys every open client socket. Idempotent. */
  close(): Promise<void>;
}

type Rgb = readonly [number, number, number];

/** SMPTE-style bars, left to right: white, yellow, cyan, green, magenta, red, blue, black. */
export const TEST_PATTERN_BARS: ReadonlyArray<Rgb> = Object.freeze([
  Object.freeze([255, 255, 255] as const),
  Object.freeze([255, 255, 0] as const),
  Object.freeze([0, 255, 255] as const),
  Object.freeze([0, 255, 0] as const),
  Object.freeze([255, 0, 255] as const),
  Object.freeze([255, 0, 0] as const),
  Object.freeze([0, 0, 255] as const),
  Object.freeze([0, 0, 0] as const),
]);

/**
 * The test pattern at (x, y): equal-width bars over the top three quarters, and a grey ramp from
 * black (left edge) to white (right edge) in the bottom quarter.
 */
export function patternPixel(x: number, y: number, width: number, height: number): Rgb {
  if (y < Math.floor((height * 3) / 4)) {
    const bars = TEST_PATTERN_BARS.length;
    const i = Math.min(bars - 1, Math.max(0, Math.floor((x * bars) / width)));
    return TEST_PATTERN_BARS[i] ?? [0, 0, 0];
  }
  const v = width <= 1 ? 0 : Math.min(255, Math.max(0, Math.round((x * 255) / (width - 1))));
  return [v, v, v];
}

/** RFC 6143 7.4, restricted to true colour. */
interface PixelFormat {
  readonly bpp: 8 | 16 | 32;
  readonly depth: number;
  readonly bigEndian: boolean;
  readonly redMax: number;
  readonly greenMax: number;
  readonly blueMax: number;
  readonly redShift: number;
  readonly greenShift: number;
  readonly blueShift: number;
}

const SERVER_FORMAT: PixelFormat = {
  bpp: 32,
  depth: 24,
  bigEndian: false,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
};

const HANDSHAKE_STAGE_MS = 30_000;
const MAX_CUT_TEXT = 1024 * 1024;
// A client may switch formats at will; keep only a few renderings so that cannot grow memory.
const MAX_CACHED_FORMATS = 4;
// Raw 32-bpp at this size is 128 MiB per rendering: well past any sensible demo screen.
const MAX_PIXELS = 1 << 25;
const MAX_NAME_BYTES = 1024;

// Client-to-server message types (7.5).
const SET_PIXEL_FORMAT = 0;
const SET_ENCODINGS = 2;
const FRAMEBUFFER_UPDATE_REQUEST = 3;
const KEY_EVENT = 4;
const POINTER_EVENT = 5;
const CLIENT_CUT_TEXT = 6;

const SECURITY_NONE = 1;

export async function startRfbServer(opts: RfbServerOptions = {}): Promise<RfbServer> {
  const width = opts.width ?? 640;
  const height = opts.height ?? 480;
  for (const [what, v] of [['width', width], ['height', height]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 0xffff) throw new RangeError(`RFB ${what} must be an integer in 1..65535, got ${v}`);
  }
  if (width * height > MAX_PIXELS) throw new RangeError(`RFB screen ${width}x${height} is too large`);
  if (opts.fill && !opts.fill.every((c) => Number.isInteger(c) && c >= 0 && c <= 255)) {
    throw new RangeError(`RFB fill must be three integers in 0..255, got ${JSON.stringify(opts.fill)}`);
  }
  const name = Buffer.from(opts.name ?? 'oneport demo', 'utf8');
  if (name.length > MAX_NAME_BYTES) throw new RangeError('RFB desktop name is too long');

  const screen = new Screen(width, height, name, opts.fill);
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  let closing: Promise<void> | undefined;

  const server = net.createServer((socket) => {
    // Before anything else: an unhandled 'error' would take the whole gateway down.
    socket.on('error', () => socket.destroy());
    if (closing) {
      socket.destroy();
      return;
    }
    accepted++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.setNoDelay(true);
    new Connection(socket, screen);
  });
  // Accept errors (e.g. EMFILE) must not crash the process; the listener stays up.
  server.on('error', () => {});

  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error): void => reject(e);
    server.once('error', onError);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.removeListener('error', onError);
      resolve();
    });
  });
  const address = server.address() as net.AddressInfo;

  return {
    host: address.address,
    port: address.port,
    get accepted() {
      return accepted;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return closing;
    },
  };
}

/** The picture, and its encodings in the pixel formats clients have asked for. */
class Screen {
  /** 3 bytes (R, G, B) per pixel, row by row. */
  private readonly rgb: Uint8Array;
  private readonly rendered = new Map<string, Buffer>();

  constructor(
    readonly width: number,
    readonly height: number,
    readonly name: Buffer,
    fill: Rgb | undefined,
  ) {
    this.rgb = new Uint8Array(width * height * 3);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) this.rgb.set(fill ?? patternPixel(x, y, width, height), (y * width + x) * 3);
    }
  }

  /** The whole screen in format `f`, computed once and shared by every client using it. */
  framebuffer(f: PixelFormat): Buffer {
    const key = `${f.bpp}:${f.bigEndian ? 'be' : 'le'}:${f.redMax}/${f.greenMax}/${f.blueMax}:${f.redShift}/${f.greenShift}/${f.blueShift}`;
    let fb = this.rendered.get(key);
    if (fb) {
      // Re-insert so the Map's order is least recently used first.
      this.rendered.delete(key);
    } else {
      fb = this.render(f);
      if (this.rendered.size >= MAX_CACHED_FORMATS) {
        const oldest = this.rendered.keys().next().value;
        if (oldest !== undefined) this.rendered.delete(oldest);
      }
    }
    this.rendered.set(key, fb);
    return fb;
  }

  private render(f: PixelFormat): Buffer {
    // Per-channel tables turn each pixel into three lookups and two ORs.
    const lr = channelTable(f.redMax, f.redShift, f.bpp);
    const lg = channelTable(f.greenMax, f.greenShift, f.bpp);
    const lb = channelTable(f.blueMax, f.blueShift, f.bpp);
    const bytes = f.bpp / 8;
    const n = this.width * this.height;
    const out = Buffer.allocUnsafe(n * bytes);
    const rgb = this.rgb;
    for (let i = 0, s = 0, o = 0; i < n; i++, s += 3, o += bytes) {
      const v = ((lr[rgb[s]!]! | lg[rgb[s + 1]!]! | lb[rgb[s + 2]!]!) >>> 0);
      if (bytes === 4) {
        if (f.bigEndian) out.writeUInt32BE(v, o);
        else out.writeUInt32LE(v, o);
      } else if (bytes === 2) {
        if (f.bigEndian) out.writeUInt16BE(v, o);
        else out.writeUInt16LE(v, o);
      } else {
        out[o] = v;
      }
    }
    return out;
  }
}

/** For each 8-bit intensity: the channel's value scaled to `max`, shifted, cut to `bpp` bits. */
function channelTable(max: number, shift: number, bpp: number): Uint32Array {
  const table = new Uint32Array(256);
  // Plain arithmetic rather than `<<`, which wraps shifts of 32 and more in JavaScript.
  const scale = 2 ** shift;
  const modulus = 2 ** bpp;
  for (let c = 0; c < 256; c++) table[c] = (Math.round((c * max) / 255) * scale) % modulus;
  return table;
}

function writePixelFormat(b: Buffer, o: number, f: PixelFormat): void {
  b.writeUInt8(f.bpp, o);
  b.writeUInt8(f.depth, o + 1);
  b.writeUInt8(f.bigEndian ? 1 : 0, o + 2);
  b.writeUInt8(1, o + 3); // true colour
  b.writeUInt16BE(f.redMax, o + 4);
  b.writeUInt16BE(f.greenMax, o + 6);
  b.writeUInt16BE(f.blueMax, o + 8);
  b.writeUInt8(f.redShift, o + 10);
  b.writeUInt8(f.greenShift, o + 11);
  b.writeUInt8(f.blueShift, o + 12);
  b.fill(0, o + 13, o + 16);
}

/** Parses the 16-byte PIXEL_FORMAT; undefined for anything this server cannot produce. */
function readPixelFormat(b: Buffer, o: number): PixelFormat | undefined {
  const bpp = b.readUInt8(o);
  if (bpp !== 8 && bpp !== 16 && bpp !== 32) return undefined;
  if (b.readUInt8(o + 3) === 0) return undefined; // colour map
  return {
    bpp,
    depth: b.readUInt8(o + 1),
    bigEndian: b.readUInt8(o + 2) !== 0,
    redMax: b.readUInt16BE(o + 4),
    greenMax: b.readUInt16BE(o + 6),
    blueMax: b.readUInt16BE(o + 8),
    redShift: b.readUInt8(o + 10),
    greenShift: b.readUInt8(o + 11),
    blueShift: b.readUInt8(o + 12),
  };
}

/**
 * Received bytes, kept as the chunks they came in. Messages are read only once complete, and
 * only the few bytes a message needs are ever copied together.
 */
class ByteQueue {
  private chunks: Buffer[] = [];
  private offset = 0; // into chunks[0]
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The first `n` bytes, contiguous, without consuming them; undefined until they all arrived. */
  peek(n: number): Buffer | undefined {
    if (n > this.length) return undefined;
    const first = this.chunks[0];
    if (!first) return Buffer.alloc(0);
    if (first.length - this.offset >= n) return first.subarray(this.offset, this.offset + n);
    let have = first.length - this.offset;
    let count = 1;
    while (have < n) have += this.chunks[count++]!.length;
    const joined = Buffer.concat([first.subarray(this.offset), ...this.chunks.slice(1, count)]);
    this.chunks.splice(0, count, joined);
    this.offset = 0;
    return joined.subarray(0, n);
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const dropped = Math.min(n, this.length);
    let left = dropped;
    while (left > 0) {
      const first = this.chunks[0]!;
      const avail = first.length - this.offset;
      if (avail > left) {
        this.offset += left;
        left = 0;
      } else {
        this.chunks.shift();
        this.offset = 0;
        left -= avail;
      }
    }
    this.length -= dropped;
    return dropped;
  }
}

type Stage = 'version' | 'security' | 'clientInit' | 'normal' | 'closing';

interface Rect {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** One client, from the ProtocolVersion exchange to the end of the connection. */
class Connection {
  private readonly input = new ByteQueue();
  private stage: Stage = 'version';
  private minor: 3 | 7 | 8 = 8;
  private format: PixelFormat = SERVER_FORMAT;
  /** Bytes of a ClientCutText still to skip; skipped as they arrive, never buffered. */
  private cutTextLeft = 0;
  private deadline: NodeJS.Timeout | undefined;
  private waitingForDrain = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly screen: Screen,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.input.push(chunk);
      this.process();
    });
    socket.once('close', () => this.clearDeadline());
    this.armDeadline();
    this.send(Buffer.from('RFB 003.008\n', 'latin1'));
  }

  private armDeadline(): void {
    this.clearDeadline();
    this.deadline = setTimeout(() => this.socket.destroy(), HANDSHAKE_STAGE_MS);
  }

  private clearDeadline(): void {
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = undefined;
  }

  private send(b: Buffer): boolean {
    if (this.socket.destroyed || !this.socket.writable) return false;
    return this.socket.write(b);
  }

  private fail(): void {
    this.socket.destroy();
  }

  /** Handles every complete message in the input, in order. */
  private process(): void {
    while (!this.socket.destroyed && !this.waitingForDrain) {
      if (this.cutTextLeft > 0) {
        this.cutTextLeft -= this.input.skip(this.cutTextLeft);
        if (this.cutTextLeft > 0) return;
      }
      // A client that asks for frames faster than it reads them waits here, with TCP pushing back,
      // instead of queueing unbounded output in this process.
      if (this.socket.writableNeedDrain) {
        this.waitingForDrain = true;
        this.socket.pause();
        this.socket.once('drain', () => {
          this.waitingForDrain = false;
          this.socket.resume();
          this.process();
        });
        return;
      }
      if (!this.step()) return;
    }
  }

  /** Consumes one message if it is complete; false when more bytes are needed or the client is gone. */
  private step(): boolean {
    switch (this.stage) {
      case 'version':
        return this.onProtocolVersion();
      case 'security':
        return this.onSecurityChoice();
      case 'clientInit':
        return this.onClientInit();
      case 'normal':
        return this.onClientMessage();
      case 'closing':
        return false;
    }
  }

  /**
   * 7.1.1: the client answers with the version it will speak: 3.7 and 3.8 have their own
   * handshakes, and the RFC says any other 3.x below them is to be treated as 3.3.
   */
  private onProtocolVersion(): boolean {
    const b = this.input.peek(12);
    if (!b) return false;
    const m = /^RFB 003\.(\d{3})\n$/.exec(b.toString('latin1'));
    const minor = Number(m?.[1] ?? NaN);
    if (!(minor >= 3 && minor <= 8)) {
      // Not RFB, or a version above the 3.8 this server offered.
      this.fail();
      return false;
    }
    this.input.skip(12);
    this.minor = minor === 8 ? 8 : minor === 7 ? 7 : 3;
    if (this.minor === 3) {
      // 3.3 has no negotiation: the server names the security type, as a U32.
      const t = Buffer.alloc(4);
      t.writeUInt32BE(SECURITY_NONE, 0);
      this.send(t);
      this.stage = 'clientInit';
    } else {
      this.send(Buffer.from([1, SECURITY_NONE]));
      this.stage = 'security';
    }
    this.armDeadline();
    return true;
  }

  /** 7.1.2, 7.1.3: the client picks from the list [None]. */
  private onSecurityChoice(): boolean {
    const b = this.input.peek(1);
    if (!b) return false;
    this.input.skip(1);
    if (b[0] !== SECURITY_NONE) {
      if (this.minor === 8) {
        // 3.8 lets the server say why before closing.
        const reason = Buffer.from('only security type None (1) is offered', 'utf8');
        const msg = Buffer.alloc(8 + reason.length);
        msg.writeUInt32BE(1, 0);
        msg.writeUInt32BE(reason.length, 4);
        reason.copy(msg, 8);
        this.send(msg);
        this.stage = 'closing';
        this.socket.end();
        return false;
      }
      this.fail();
      return false;
    }
    // 3.7 sends no SecurityResult for None; 3.8 always does.
    if (this.minor === 8) this.send(Buffer.alloc(4));
    this.stage = 'clientInit';
    this.armDeadline();
    return true;
  }

  /** 7.3.1, 7.3.2: the shared flag is irrelevant here, since nothing is exclusive. */
  private onClientInit(): boolean {
    if (!this.input.peek(1)) return false;
    this.input.skip(1);
    const { width, height, name } = this.screen;
    const init = Buffer.alloc(24 + name.length);
    init.writeUInt16BE(width, 0);
    init.writeUInt16BE(height, 2);
    writePixelFormat(init, 4, SERVER_FORMAT);
    init.writeUInt32BE(name.length, 20);
    name.copy(init, 24);
    this.send(init);
    this.stage = 'normal';
    this.clearDeadline();
    return true;
  }

  /** 7.5: one client-to-server message. */
  private onClientMessage(): boolean {
    const head = this.input.peek(1);
    if (!head) return false;
    switch (head[0]) {
      case SET_PIXEL_FORMAT: {
        const b = this.input.peek(20);
        if (!b) return false;
        const f = readPixelFormat(b, 4);
        if (!f) {
          this.fail();
          return false;
        }
        this.input.skip(20);
        this.format = f;
        return true;
      }
      case SET_ENCODINGS: {
        const h = this.input.peek(4);
        if (!h) return false;
        const count = h.readUInt16BE(2);
        // Only Raw is ever sent, and every client must accept Raw: the list is read and dropped.
        if (!this.input.peek(4 + 4 * count)) return false;
        this.input.skip(4 + 4 * count);
        return true;
      }
      case FRAMEBUFFER_UPDATE_REQUEST: {
        const b = this.input.peek(10);
        if (!b) return false;
        const rect = { x: b.readUInt16BE(2), y: b.readUInt16BE(4), w: b.readUInt16BE(6), h: b.readUInt16BE(8) };
        this.input.skip(10);
        // Nothing on this desktop ever changes, so incremental requests stay unanswered.
        if (b[1] === 0) this.sendUpdate(rect);
        return true;
      }
      case KEY_EVENT:
        return this.ignore(8);
      case POINTER_EVENT:
        return this.ignore(6);
      case CLIENT_CUT_TEXT: {
        const b = this.input.peek(8);
        if (!b) return false;
        const length = b.readUInt32BE(4);
        if (length > MAX_CUT_TEXT) {
          this.fail();
          return false;
        }
        this.input.skip(8);
        this.cutTextLeft = length;
        return true;
      }
      default:
        // Message lengths are implicit in RFB: after an unknown type the stream cannot be parsed.
        this.fail();
        return false;
    }
  }

  /** Drops a fixed-size message once it is complete. */
  private ignore(size: number): boolean {
    if (this.input.length < size) return false;
    this.input.skip(size);
    return true;
  }

  /** 7.6.1: one Raw rectangle, the request clipped to the screen (no rectangle if nothing is left). */
  private sendUpdate(req: Rect): void {
    const { width, height } = this.screen;
    const x0 = Math.min(req.x, width);
    const y0 = Math.min(req.y, height);
    const w = Math.min(req.x + req.w, width) - x0;
    const h = Math.min(req.y + req.h, height) - y0;
    const empty = w <= 0 || h <= 0;
    const header = Buffer.alloc(empty ? 4 : 16);
    header.writeUInt8(0, 0); // FramebufferUpdate
    header.writeUInt16BE(empty ? 0 : 1, 2);
    if (empty) {
      this.send(header);
      return;
    }
    header.writeUInt16BE(x0, 4);
    header.writeUInt16BE(y0, 6);
    header.writeUInt16BE(w, 8);
    header.writeUInt16BE(h, 10);
    header.writeInt32BE(0, 12); // Raw
    const fb = this.screen.framebuffer(this.format);
    const bytes = this.format.bpp / 8;
    const rowBytes = w * bytes;
    let pixels: Buffer;
    if (w === width) {
      // Whole rows are contiguous in the shared framebuffer: no copy at all.
      pixels = fb.subarray(y0 * width * bytes, (y0 + h) * width * bytes);
    } else {
      pixels = Buffer.allocUnsafe(rowBytes * h);
      for (let row = 0; row < h; row++) {
        const start = ((y0 + row) * width + x0) * bytes;
        fb.copy(pixels, row * rowBytes, start, start + rowBytes);
      }
    }
    // Corked so header and pixels leave in one writev, not as a tiny separate segment.
    this.socket.cork();
    this.send(header);
    this.send(pixels);
    this.socket.uncork();
  }
}
