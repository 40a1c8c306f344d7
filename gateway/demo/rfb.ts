/**
 * A small RFB 3.8 server (RFC 6143): the gateway's built-in demo desktop and a test fixture.
 * It draws a fixed test pattern (8 colour bars over a grey ramp) and speaks just enough RFB for
 * any viewer: versions 3.3/3.7/3.8, security type None (7.1.2), ClientInit/ServerInit (7.3),
 * SetPixelFormat for any true-colour format (7.5.1), SetEncodings (7.5.2), FramebufferUpdate with
 * Raw rectangles (7.6.1, 7.7.1), and it reads and ignores key, pointer and cut-text events.
 */
import net from 'node:net';

export interface RfbServerOptions {
  host?: string;
  port?: number;
  width?: number;
  height?: number;
  name?: string;
  /** A solid RGB colour instead of the test pattern. */
  fill?: readonly [number, number, number];
}

export interface RfbServer {
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Stop listening and drop every client. Idempotent. */
  close(): Promise<void>;
}

/** White, yellow, cyan, green, magenta, red, blue, black (SMPTE-style bars). */
export const TEST_PATTERN_BARS: ReadonlyArray<readonly [number, number, number]> = [
  [255, 255, 255],
  [255, 255, 0],
  [0, 255, 255],
  [0, 255, 0],
  [255, 0, 255],
  [255, 0, 0],
  [0, 0, 255],
  [0, 0, 0],
];

export function patternPixel(x: number, y: number, width: number, height: number): readonly [number, number, number] {
  if (y < Math.floor((height * 3) / 4)) {
    const bar = Math.min(TEST_PATTERN_BARS.length - 1, Math.floor((x * TEST_PATTERN_BARS.length) / width));
    return TEST_PATTERN_BARS[bar] as readonly [number, number, number];
  }
  const v = width <= 1 ? 0 : Math.round((x * 255) / (width - 1));
  return [v, v, v];
}

interface PixelFormat {
  bpp: 8 | 16 | 32;
  bigEndian: boolean;
  redMax: number;
  greenMax: number;
  blueMax: number;
  redShift: number;
  greenShift: number;
  blueShift: number;
}

const DEFAULT_FORMAT: PixelFormat = { bpp: 32, bigEndian: false, redMax: 255, greenMax: 255, blueMax: 255, redShift: 16, greenShift: 8, blueShift: 0 };
const MAX_CUT_TEXT = 1024 * 1024;
const HANDSHAKE_MS = 30_000;

/** The whole screen, encoded once per pixel format a client asks for. */
function render(rgb: Uint8Array, width: number, height: number, f: PixelFormat): Buffer {
  const bytes = f.bpp / 8;
  const out = Buffer.alloc(width * height * bytes);
  for (let i = 0; i < width * height; i++) {
    const r = rgb[i * 3] ?? 0;
    const g = rgb[i * 3 + 1] ?? 0;
    const b = rgb[i * 3 + 2] ?? 0;
    const v =
      ((Math.round((r * f.redMax) / 255) << f.redShift) |
        (Math.round((g * f.greenMax) / 255) << f.greenShift) |
        (Math.round((b * f.blueMax) / 255) << f.blueShift)) >>>
      0;
    const o = i * bytes;
    if (bytes === 1) out[o] = v & 0xff;
    else if (bytes === 2) f.bigEndian ? out.writeUInt16BE(v & 0xffff, o) : out.writeUInt16LE(v & 0xffff, o);
    else f.bigEndian ? out.writeUInt32BE(v, o) : out.writeUInt32LE(v, o);
  }
  return out;
}

function formatKey(f: PixelFormat): string {
  return `${f.bpp}/${f.bigEndian}/${f.redMax},${f.greenMax},${f.blueMax}/${f.redShift},${f.greenShift},${f.blueShift}`;
}

export async function startRfbServer(opts: RfbServerOptions = {}): Promise<RfbServer> {
  const width = opts.width ?? 640;
  const height = opts.height ?? 480;
  const name = Buffer.from(opts.name ?? 'oneport demo', 'utf8');
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const [r, g, b] = opts.fill ?? patternPixel(x, y, width, height);
      rgb.set([r, g, b], (y * width + x) * 3);
    }
  }
  const rendered = new Map<string, Buffer>();
  const frameFor = (f: PixelFormat): Buffer => {
    const k = formatKey(f);
    let b = rendered.get(k);
    if (!b) rendered.set(k, (b = render(rgb, width, height, f)));
    return b;
  };

  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    socket.on('error', () => socket.destroy());
    accepted++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.setNoDelay(true);
    serveClient(socket, { width, height, name, frameFor });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const address = server.address() as net.AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    host: address.address,
    port: address.port,
    get accepted() {
      return accepted;
    },
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      })),
  };
}

interface Screen {
  width: number;
  height: number;
  name: Buffer;
  frameFor(f: PixelFormat): Buffer;
}

type Stage = 'version' | 'security' | 'init' | 'normal';

function serveClient(socket: net.Socket, screen: Screen): void {
  let buf: Buffer = Buffer.alloc(0);
  let stage: Stage = 'version';
  let minor = 8;
  let format = DEFAULT_FORMAT;
  const deadline = setTimeout(() => socket.destroy(), HANDSHAKE_MS);
  socket.once('close', () => clearTimeout(deadline));
  socket.write('RFB 003.008\n');

  const sendUpdate = (x: number, y: number, w: number, h: number): void => {
    // Clip to the screen; an empty rectangle still gets an (empty) update, as clients expect one.
    const x0 = Math.min(x, screen.width);
    const y0 = Math.min(y, screen.height);
    const x1 = Math.min(x + w, screen.width);
    const y1 = Math.min(y + h, screen.height);
    const rw = x1 - x0;
    const rh = y1 - y0;
    const bytes = format.bpp / 8;
    const frame = screen.frameFor(format);
    const header = Buffer.alloc(4 + 12);
    header.writeUInt8(0, 0); // FramebufferUpdate
    header.writeUInt16BE(1, 2);
    header.writeUInt16BE(x0, 4);
    header.writeUInt16BE(y0, 6);
    header.writeUInt16BE(rw, 8);
    header.writeUInt16BE(rh, 10);
    header.writeInt32BE(0, 12); // Raw
    const rows: Buffer[] = [header];
    for (let row = y0; row < y1; row++) {
      const start = (row * screen.width + x0) * bytes;
      rows.push(frame.subarray(start, start + rw * bytes));
    }
    socket.write(Buffer.concat(rows));
  };

  /** Returns bytes consumed, or 0 when the message is not complete yet. Throws to drop the client. */
  const step = (): number => {
    switch (stage) {
      case 'version': {
        if (buf.length < 12) return 0;
        const m = /^RFB 003\.(\d{3})\n$/.exec(buf.subarray(0, 12).toString('latin1'));
        if (!m) throw new Error('bad ProtocolVersion');
        minor = Number(m[1]);
        if (minor >= 8) minor = 8;
        else if (minor >= 7) minor = 7;
        else minor = 3;
        if (minor === 3) {
          socket.write(Buffer.from([0, 0, 0, 1])); // 3.3: the server decides: None
          stage = 'init';
        } else {
          socket.write(Buffer.from([1, 1])); // one type: None
          stage = 'security';
        }
        return 12;
      }
      case 'security': {
        if (buf.length < 1) return 0;
        if (buf[0] !== 1) throw new Error('unsupported security type');
        if (minor === 8) socket.write(Buffer.from([0, 0, 0, 0])); // SecurityResult OK
        stage = 'init';
        return 1;
      }
      case 'init': {
        if (buf.length < 1) return 0;
        const init = Buffer.alloc(24 + screen.name.length);
        init.writeUInt16BE(screen.width, 0);
        init.writeUInt16BE(screen.height, 2);
        writeFormat(init, 4, DEFAULT_FORMAT);
        init.writeUInt32BE(screen.name.length, 20);
        screen.name.copy(init, 24);
        socket.write(init);
        stage = 'normal';
        clearTimeout(deadline);
        return 1;
      }
      case 'normal': {
        if (buf.length < 1) return 0;
        switch (buf[0]) {
          case 0: {
            if (buf.length < 20) return 0;
            format = readFormat(buf, 4);
            return 20;
          }
          case 2: {
            if (buf.length < 4) return 0;
            const n = buf.readUInt16BE(2);
            return buf.length < 4 + 4 * n ? 0 : 4 + 4 * n;
          }
          case 3: {
            if (buf.length < 10) return 0;
            // Incremental requests: nothing ever changes here, so they are left unanswered.
            if (buf[1] === 0) sendUpdate(buf.readUInt16BE(2), buf.readUInt16BE(4), buf.readUInt16BE(6), buf.readUInt16BE(8));
            return 10;
          }
          case 4:
            return buf.length < 8 ? 0 : 8;
          case 5:
            return buf.length < 6 ? 0 : 6;
          case 6: {
            if (buf.length < 8) return 0;
            const len = buf.readUInt32BE(4);
            if (len > MAX_CUT_TEXT) throw new Error('cut text too long');
            return buf.length < 8 + len ? 0 : 8 + len;
          }
          default:
            throw new Error(`unknown message type ${buf[0]}`);
        }
      }
    }
  };

  socket.on('data', (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    try {
      for (;;) {
        const used = step();
        if (used === 0) break;
        buf = buf.subarray(used);
      }
    } catch {
      socket.destroy();
    }
  });
}

function writeFormat(b: Buffer, o: number, f: PixelFormat): void {
  b.writeUInt8(f.bpp, o);
  b.writeUInt8(f.bpp === 32 ? 24 : f.bpp === 16 ? 16 : 8, o + 1);
  b.writeUInt8(f.bigEndian ? 1 : 0, o + 2);
  b.writeUInt8(1, o + 3); // true colour
  b.writeUInt16BE(f.redMax, o + 4);
  b.writeUInt16BE(f.greenMax, o + 6);
  b.writeUInt16BE(f.blueMax, o + 8);
  b.writeUInt8(f.redShift, o + 10);
  b.writeUInt8(f.greenShift, o + 11);
  b.writeUInt8(f.blueShift, o + 12);
}

/** SetPixelFormat: true colour only, 8/16/32 bits per pixel; anything else drops the client. */
function readFormat(b: Buffer, o: number): PixelFormat {
  const bpp = b.readUInt8(o);
  if (bpp !== 8 && bpp !== 16 && bpp !== 32) throw new Error('unsupported bits per pixel');
  if (b.readUInt8(o + 3) === 0) throw new Error('colour-map formats are not supported');
  const f: PixelFormat = {
    bpp,
    bigEndian: b.readUInt8(o + 2) !== 0,
    redMax: b.readUInt16BE(o + 4),
    greenMax: b.readUInt16BE(o + 6),
    blueMax: b.readUInt16BE(o + 8),
    redShift: b.readUInt8(o + 10),
    greenShift: b.readUInt8(o + 11),
    blueShift: b.readUInt8(o + 12),
  };
  if (f.redShift > 31 || f.greenShift > 31 || f.blueShift > 31) throw new Error('bad shift');
  return f;
}
