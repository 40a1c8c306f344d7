/**
 * Load-generating clients for each path, behind one small interface (`Conn`), and the three
 * measurements (throughput, round-trip latency, tunnel setup) written once against it.
 *
 * Every wait is bounded: a stuck path fails with an error instead of hanging the benchmark.
 */
import net from 'node:net';
import tls from 'node:tls';
import { type RawData, WebSocket } from 'ws';
import { BANNER, DONE, MODE_ECHO, MODE_SINK, MODE_SOURCE } from './ipc.js';
import { ByteQueue } from '../test/helpers/bytes.js';
import { type TsguPacket, ExtendedAuth, TsguPacketReader, encodeData, encodePacket, websocketAccept } from '../protocols/tsgu.js';
import { Opcode } from '../protocols/websocket-frame.js';
import { toUtf16z } from '../protocols/parse.js';

export interface Conn {
  /** Queue bytes; a promise means "wait before writing more" (backpressure). */
  write(buf: Buffer): Promise<void> | undefined;
  /** Exactly n bytes (across chunks or WebSocket messages). */
  read(n: number, timeoutMs?: number): Promise<Buffer>;
  /** Receive and throw away n bytes, without keeping them. */
  discard(n: number, timeoutMs?: number): Promise<void>;
  /** Orderly close (FIN / close_notify / WebSocket close), bounded; then destroyed. */
  close(timeoutMs?: number): Promise<void>;
  destroy(): void;
  /** Negotiated TLS version and cipher, when there is TLS. */
  readonly tls: string | undefined;
  /** The TLS session was resumed (no full handshake). */
  readonly resumed?: boolean;
}

export type Opener = () => Promise<Conn>;

const DEFAULT_READ_TIMEOUT_MS = 15_000;

function tlsDescription(s: net.Socket | tls.TLSSocket): string | undefined {
  if (!(s instanceof tls.TLSSocket)) return undefined;
  const c = s.getCipher();
  return `${s.getProtocol() ?? '?'} ${c.standardName || c.name}`;
}

/** Resolves once `socket` drained its writes; rejects if it closes first. */
function drained(socket: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      socket.removeListener('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      socket.removeListener('drain', onDrain);
      reject(new Error('connection closed while writing'));
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

/** Orderly end (with `last` as the final bytes), bounded by `timeoutMs`, then destroyed. */
async function endSocket(socket: net.Socket, timeoutMs: number, last?: Buffer): Promise<void> {
  if (socket.destroyed) return;
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  if (last) socket.end(last);
  else socket.end();
  const t = setTimeout(() => socket.destroy(), timeoutMs);
  await closed;
  clearTimeout(t);
}

/** A byte-stream client leg: TCP or TLS, raw or after a CONNECT answer. */
class StreamConn implements Conn {
  private readonly q = new ByteQueue();
  readonly tls: string | undefined;
  readonly resumed: boolean;

  constructor(
    private readonly socket: net.Socket,
    leftover?: Buffer,
  ) {
    this.tls = tlsDescription(socket);
    this.resumed = socket instanceof tls.TLSSocket && socket.isSessionReused();
    if (leftover && leftover.length > 0) this.q.push(leftover);
    socket.on('data', (b: Buffer) => this.q.push(b));
    socket.on('error', (e) => this.q.end(e));
    socket.on('close', () => this.q.end(new Error('connection closed')));
    socket.resume();
  }

  write(buf: Buffer): Promise<void> | undefined {
    return this.socket.write(buf) ? undefined : drained(this.socket);
  }

  read(n: number, timeoutMs = DEFAULT_READ_TIMEOUT_MS): Promise<Buffer> {
    return this.q.read(n, timeoutMs);
  }

  discard(n: number, timeoutMs = DEFAULT_READ_TIMEOUT_MS): Promise<void> {
    return this.q.discard(n, timeoutMs);
  }

  close(timeoutMs = 2000): Promise<void> {
    return endSocket(this.socket, timeoutMs);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** WebSocket messages above this many bytes in flight make write() wait (until below LOW). */
const WS_HIGH = 1024 * 1024;
const WS_LOW = 256 * 1024;

class WsConn implements Conn {
  private readonly q = new ByteQueue();
  private waiting: { resolve: () => void; reject: (e: Error) => void } | undefined;
  readonly tls: string | undefined;

  constructor(private readonly ws: WebSocket) {
    const sock = (ws as unknown as { _socket?: net.Socket })._socket;
    this.tls = sock ? tlsDescription(sock) : undefined;
    ws.on('message', (data: RawData) => this.q.push(Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data)));
    ws.on('error', (e) => this.fail(e));
    ws.on('close', (code, reason) => this.fail(new Error(`WebSocket closed ${code} ${reason.toString()}`)));
  }

  private fail(e: Error): void {
    this.q.end(e);
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(e);
  }

  write(buf: Buffer): Promise<void> | undefined {
    this.ws.send(buf, { binary: true }, (err) => {
      if (err) return this.fail(err);
      if (this.waiting && this.ws.bufferedAmount <= WS_LOW) {
        const w = this.waiting;
        this.waiting = undefined;
        w.resolve();
      }
    });
    if (this.ws.bufferedAmount <= WS_HIGH) return undefined;
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  read(n: number, timeoutMs = DEFAULT_READ_TIMEOUT_MS): Promise<Buffer> {
    return this.q.read(n, timeoutMs);
  }

  discard(n: number, timeoutMs = DEFAULT_READ_TIMEOUT_MS): Promise<void> {
    return this.q.discard(n, timeoutMs);
  }

  async close(timeoutMs = 2000): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => this.ws.once('close', () => resolve()));
    this.ws.close(1000);
    const t = setTimeout(() => this.ws.terminate(), timeoutMs);
    await closed;
    clearTimeout(t);
  }

  destroy(): void {
    this.ws.terminate();
  }
}

function connected(socket: net.Socket, event: 'connect' | 'secureConnect', timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no ${event} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(event, () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve();
    });
    const onError = (e: Error): void => {
      clearTimeout(timer);
      reject(e);
    };
    socket.once('error', onError);
  });
}

export interface TlsClientOptions {
  readonly ca: string;
  readonly servername: string;
  /** TLS session resumption: the last session ticket the server sent is offered on the next connection. */
  readonly resume?: { session?: Buffer };
}

function tlsConnect(port: number, t: TlsClientOptions): tls.TLSSocket {
  const r = t.resume;
  const s = tls.connect({ host: '127.0.0.1', port, ca: t.ca, servername: t.servername, ALPNProtocols: ['http/1.1'], ...(r?.session ? { session: r.session } : {}) });
  if (r) s.on('session', (session: Buffer) => (r.session = session));
  s.setNoDelay(true);
  return s;
}

export function tcpOpener(port: number): Opener {
  return async () => {
    const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
    s.on('error', () => {});
    await connected(s, 'connect', 5000);
    return new StreamConn(s);
  };
}

export function tlsOpener(port: number, t: TlsClientOptions): Opener {
  return async () => {
    const s = tlsConnect(port, t);
    s.on('error', () => {});
    await connected(s, 'secureConnect', 5000);
    return new StreamConn(s);
  };
}

/** HTTP CONNECT with the ticket as Bearer credentials, in clear text or inside TLS. */
export function connectOpener(port: number, vm: string, ticket: () => string, t?: TlsClientOptions): Opener {
  return async () => {
    const s = t ? tlsConnect(port, t) : net.connect({ host: '127.0.0.1', port, noDelay: true });
    s.on('error', () => {});
    await connected(s, t ? 'secureConnect' : 'connect', 5000);
    s.write(`CONNECT ${vm}:5900 HTTP/1.1\r\nHost: ${vm}:5900\r\nProxy-Authorization: Bearer ${ticket()}\r\n\r\n`);
    const { status, rest, head } = await readHead(s, 10_000);
    if (status !== 200) {
      s.destroy();
      throw new Error(`CONNECT answered ${head.split('\r\n')[0] ?? status}`);
    }
    return new StreamConn(s, rest);
  };
}

function readHead(s: net.Socket, timeoutMs: number): Promise<{ status: number; head: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error(`no CONNECT answer within ${timeoutMs} ms`)), timeoutMs);
    const onData = (d: Buffer): void => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > 16384) done(new Error('CONNECT answer too long'));
        return;
      }
      s.pause();
      const head = buf.subarray(0, end).toString('latin1');
      done(undefined, { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0), head, rest: buf.subarray(end + 4) });
    };
    const onClose = (): void => done(new Error(`connection closed before the CONNECT answer: ${JSON.stringify(buf.toString('latin1').slice(0, 120))}`));
    const done = (err?: Error, v?: { status: number; head: string; rest: Buffer }): void => {
      clearTimeout(timer);
      s.removeListener('data', onData);
      s.removeListener('close', onClose);
      if (err) {
        s.destroy();
        reject(err);
      } else resolve(v as { status: number; head: string; rest: Buffer });
    };
    s.on('data', onData);
    s.once('close', onClose);
  });
}

/** WebSocket client (subprotocol "binary", no compression); `url` may be ws:// or wss://. */
export function wsOpener(url: () => string, t?: TlsClientOptions): Opener {
  return () =>
    new Promise<Conn>((resolve, reject) => {
      const ws = new WebSocket(url(), ['binary'], {
        perMessageDeflate: false,
        handshakeTimeout: 10_000,
        maxPayload: 64 * 1024 * 1024,
        ...(t ? { ca: t.ca, servername: t.servername } : {}),
      });
      const onError = (e: Error): void => {
        ws.terminate();
        reject(e);
      };
      ws.once('error', onError);
      ws.once('unexpected-response', (_req, res) => {
        ws.terminate();
        reject(new Error(`WebSocket handshake answered HTTP ${res.statusCode}`));
      });
      ws.once('open', () => {
        ws.removeListener('error', onError);
        ws.on('error', () => {});
        resolve(new WsConn(ws));
      });
    });
}

/** FreeRDP's Sec-WebSocket-Key: 15 characters, not base64. */
const RDG_KEY = 'ZZIGAOZUBBAPOFV';

/**
 * An RD Gateway client over wss, as FreeRDP's `/gt:http` speaks it: RDG_OUT_DATA upgraded to a
 * WebSocket, the MS-TSGU handshake with the ticket as PAA cookie, then RDP bytes in DATA packets
 * (at most 65535 bytes each) in masked binary frames. The mask is all zeros (legal, and the
 * client's masking then costs nothing): the gateway still unmasks every byte.
 */
class RdgConn implements Conn {
  private readonly q = new ByteQueue();
  private readonly reader = new TsguPacketReader();
  private frames: Buffer = Buffer.alloc(0);
  private readonly control: TsguPacket[] = [];
  private controlWaiter: ((p: TsguPacket) => void) | undefined;
  readonly tls: string | undefined;

  constructor(private readonly socket: tls.TLSSocket, leftover: Buffer) {
    this.tls = tlsDescription(socket);
    socket.on('data', (b: Buffer) => this.onBytes(b));
    socket.on('error', (e) => this.q.end(e));
    socket.on('close', () => this.q.end(new Error('connection closed')));
    if (leftover.length > 0) this.onBytes(leftover);
    socket.resume();
  }

  private onBytes(b: Buffer): void {
    this.frames = this.frames.length === 0 ? b : Buffer.concat([this.frames, b]);
    for (;;) {
      const f = this.frames;
      if (f.length < 2) return;
      let n = f[1]! & 0x7f;
      let at = 2;
      if (n === 126) {
        if (f.length < 4) return;
        n = f.readUInt16BE(2);
        at = 4;
      } else if (n === 127) {
        if (f.length < 10) return;
        n = f.readUInt32BE(6);
        at = 10;
      }
      if (f.length < at + n) return;
      const opcode = f[0]! & 0x0f;
      const payload = f.subarray(at, at + n);
      this.frames = f.subarray(at + n);
      if (opcode === Opcode.PING) this.socket.write(frame(Opcode.PONG, payload));
      if (opcode !== Opcode.BINARY && opcode !== Opcode.CONTINUATION) continue;
      this.reader.push(payload);
      for (;;) {
        const r = this.reader.next();
        if (r.kind === 'more') break;
        if (r.kind === 'error') {
          this.q.end(new Error(`bad packet from the gateway: ${r.code}`));
          this.socket.destroy();
          return;
        }
        if (r.packet.type === 'data') this.q.push(Buffer.from(r.packet.data));
        else if (this.controlWaiter) {
          const w = this.controlWaiter;
          this.controlWaiter = undefined;
          w(r.packet);
        } else this.control.push(r.packet);
      }
    }
  }

  sendPacket(p: Buffer): boolean {
    return this.socket.write(frame(Opcode.BINARY, p));
  }

  nextControl(timeoutMs: number): Promise<TsguPacket> {
    const queued = this.control.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no MS-TSGU answer in time')), timeoutMs);
      this.controlWaiter = (p) => {
        clearTimeout(timer);
        resolve(p);
      };
    });
  }

  write(buf: Buffer): Promise<void> | undefined {
    let ok = true;
    for (const p of encodeData(buf)) ok = this.sendPacket(p) && ok;
    return ok ? undefined : drained(this.socket);
  }

  read(n: number, timeoutMs = DEFAULT_READ_TIMEOUT_MS): Promise<Buffer> {
    return this.q.read(n, timeoutMs);
  }

  discard(n: number, timeoutMs = DEFAULT_READ_TIMEOUT_MS): Promise<void> {
    return this.q.discard(n, timeoutMs);
  }

  close(timeoutMs = 2000): Promise<void> {
    if (!this.socket.destroyed) this.sendPacket(encodePacket({ type: 'close-channel', statusCode: 0 }));
    return endSocket(this.socket, timeoutMs, frame(Opcode.CLOSE, Buffer.from([0x03, 0xe8])));
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A client frame with an all-zero mask: header, four zero bytes, the payload as is. */
function frame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, 0x80 | n]) : n < 0x10000 ? Buffer.from([0x80 | opcode, 0x80 | 126, n >> 8, n & 0xff]) : Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | 127, 0, 0, 0, 0]), Buffer.from([n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff])]);
  return Buffer.concat([head, Buffer.alloc(4), payload]);
}

/** The RD Gateway entrance over its WebSocket variant: upgrade, handshake, tunnel, channel to `vm`. */
export function rdgOpener(port: number, vm: string, ticket: () => string, t: TlsClientOptions): Opener {
  return async () => {
    const s = tlsConnect(port, t);
    s.on('error', () => {});
    await connected(s, 'secureConnect', 5000);
    s.write(
      'RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        `Sec-Websocket-Version: 13\r\nSec-Websocket-Key: ${RDG_KEY}\r\nRDG-Connection-Id: {bench}\r\nRDG-Auth-Scheme: PAA\r\nContent-Length: 0\r\n\r\n`,
    );
    const { status, rest, head } = await readHead(s, 10_000);
    if (status !== 101 || !head.includes(websocketAccept(RDG_KEY))) {
      s.destroy();
      throw new Error(`RDG_OUT_DATA answered ${head.split('\r\n')[0] ?? status}`);
    }
    const c = new RdgConn(s, rest);
    const ask = async (p: TsguPacket, answer: TsguPacket['type']): Promise<void> => {
      c.sendPacket(encodePacket(p));
      const a = await c.nextControl(10_000);
      const code = 'errorCode' in a ? a.errorCode : 'statusCode' in a ? a.statusCode : -1;
      if (a.type !== answer || code !== 0) {
        c.destroy();
        throw new Error(`RD Gateway answered ${a.type} 0x${code.toString(16)}`);
      }
    };
    await ask({ type: 'handshake-request', versionMajor: 1, versionMinor: 0, clientVersion: 0, extendedAuth: ExtendedAuth.PAA }, 'handshake-response');
    await ask({ type: 'tunnel-create', capabilities: 0x0d, paaCookie: toUtf16z(ticket()) }, 'tunnel-response');
    await ask({ type: 'tunnel-auth', clientName: 'bench' }, 'tunnel-auth-response');
    await ask({ type: 'channel-create', resources: [vm], altResources: [], port: 3389, protocol: 3 }, 'channel-response');
    return c;
  };
}

// ---------------------------------------------------------------------------------------------
// Measurements

export async function expectBanner(c: Conn): Promise<void> {
  const b = await c.read(BANNER.length, 10_000);
  if (!b.equals(BANNER)) throw new Error(`unexpected banner ${JSON.stringify(b.toString('latin1'))}`);
}

export interface ThroughputRun {
  readonly bytes: number;
  readonly seconds: number;
  readonly mbPerSecond: number;
  /** CPU seconds used by the relay process tree during the transfer (NaN when not measured). */
  readonly relayCpuSeconds: number;
  readonly tls: string | undefined;
}

/**
 * Push `bytes` one way in `chunk`-sized writes (one WebSocket message each) into the sink; the
 * clock runs from the first data byte to the sink's "all arrived" answer. `cpu()` is sampled
 * right before and right after, with the tunnel still open.
 */
export async function throughput(open: Opener, bytes: number, chunk: number, cpu: () => number, timeoutMs: number): Promise<ThroughputRun> {
  const c = await open();
  try {
    await expectBanner(c);
    const header = Buffer.alloc(9);
    header[0] = MODE_SINK;
    header.writeBigUInt64BE(BigInt(bytes), 1);
    await c.write(header);
    const block = Buffer.alloc(chunk);
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((i * 2654435761) >>> 0, i);
    const cpu0 = cpu();
    const t0 = process.hrtime.bigint();
    const deadline = Date.now() + timeoutMs;
    let sent = 0;
    while (sent < bytes) {
      const n = Math.min(chunk, bytes - sent);
      const wait = c.write(n === chunk ? block : block.subarray(0, n));
      sent += n;
      if (wait) await wait;
      if (Date.now() > deadline) throw new Error(`transfer not done within ${timeoutMs} ms (${sent} bytes sent)`);
    }
    const done = await c.read(1, Math.max(1000, deadline - Date.now()));
    const t1 = process.hrtime.bigint();
    const cpu1 = cpu();
    if (done[0] !== DONE) throw new Error('sink answered something else');
    const seconds = Number(t1 - t0) / 1e9;
    return { bytes, seconds, mbPerSecond: bytes / 1e6 / seconds, relayCpuSeconds: cpu1 - cpu0, tls: c.tls };
  } finally {
    await c.close().catch(() => c.destroy());
  }
}

/**
 * The other direction, console to client (what a VNC or SPICE viewer mostly receives): ask the
 * backend for `bytes` (it writes 64 KiB blocks) and time the request until the last byte arrived.
 */
export async function download(open: Opener, bytes: number, cpu: () => number, timeoutMs: number): Promise<ThroughputRun> {
  const c = await open();
  try {
    await expectBanner(c);
    const request = Buffer.alloc(9);
    request[0] = MODE_SOURCE;
    request.writeBigUInt64BE(BigInt(bytes), 1);
    const cpu0 = cpu();
    const t0 = process.hrtime.bigint();
    await c.write(request);
    await c.discard(bytes, timeoutMs);
    const t1 = process.hrtime.bigint();
    const cpu1 = cpu();
    const seconds = Number(t1 - t0) / 1e9;
    await c.close().catch(() => c.destroy());
    return { bytes, seconds, mbPerSecond: bytes / 1e6 / seconds, relayCpuSeconds: cpu1 - cpu0, tls: c.tls };
  } catch (e) {
    // The backend may still be writing: no orderly close then.
    c.destroy();
    throw e;
  }
}

export interface LatencyRun {
  readonly samplesUs: number[];
  readonly p50Us: number;
  readonly p99Us: number;
  readonly meanUs: number;
}

/** `count` sequential `size`-byte ping-pongs over one tunnel, after `warmup` unrecorded ones. */
export async function latency(open: Opener, count: number, warmup: number, size: number): Promise<LatencyRun> {
  const c = await open();
  try {
    await expectBanner(c);
    await c.write(Buffer.of(MODE_ECHO));
    const ping = Buffer.alloc(size, 0x61);
    const samples: number[] = [];
    for (let i = 0; i < warmup + count; i++) {
      ping.writeUInt32BE(i, 0);
      const t0 = process.hrtime.bigint();
      const w = c.write(ping);
      if (w) await w;
      const pong = await c.read(size, 5000);
      const t1 = process.hrtime.bigint();
      if (pong.readUInt32BE(0) !== i) throw new Error(`echo out of order at ${i}`);
      if (i >= warmup) samples.push(Number(t1 - t0) / 1e3);
    }
    return { samplesUs: samples, ...summary(samples) };
  } finally {
    await c.close().catch(() => c.destroy());
  }
}

function summary(samples: number[]): { p50Us: number; p99Us: number; meanUs: number } {
  const s = [...samples].sort((a, b) => a - b);
  return { p50Us: percentile(s, 0.5), p99Us: percentile(s, 0.99), meanUs: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length) };
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i] as number;
}

export interface SetupRun {
  readonly count: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly failures: number;
  readonly firstError: string | undefined;
}

/**
 * `count` sequential tunnels: open (TCP, TLS, CONNECT or WebSocket handshake), the console's
 * banner, one 4-byte echo, orderly close. Latency is open-to-echo; the rate includes the close.
 */
export async function setup(open: Opener, count: number, warmup: number): Promise<SetupRun> {
  const samples: number[] = [];
  let failures = 0;
  let firstError: string | undefined;
  const one = async (): Promise<number> => {
    const t0 = process.hrtime.bigint();
    const c = await open();
    try {
      await expectBanner(c);
      await c.write(Buffer.from('Eping', 'latin1'));
      const back = await c.read(4, 5000);
      if (back.toString('latin1') !== 'ping') throw new Error('bad echo');
      return Number(process.hrtime.bigint() - t0) / 1e6;
    } finally {
      await c.close().catch(() => c.destroy());
    }
  };
  for (let i = 0; i < warmup; i++) await one();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    try {
      samples.push(await one());
    } catch (e) {
      failures++;
      firstError ??= (e as Error).message;
      if (failures > Math.max(5, count / 10)) throw new Error(`too many failed tunnel opens (${failures}); first: ${firstError}`);
    }
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const sorted = samples.sort((a, b) => a - b);
  return {
    count: samples.length,
    seconds,
    perSecond: samples.length / seconds,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    failures,
    firstError,
  };
}

export interface IdleRun {
  readonly count: number;
  readonly rssBeforeKiB: number;
  readonly rssAfterKiB: number;
  /** RSS growth of the relay over the open idle tunnels, per tunnel. */
  readonly perTunnelKiB: number;
  readonly openSeconds: number;
}

/**
 * Memory per idle tunnel: `count` tunnels opened (`concurrency` at a time, each up to the
 * console's banner, so both legs exist), left idle, then the relay's RSS growth divided by
 * `count`. `warmup` tunnels are opened and closed first so that the baseline already holds
 * what any first tunnel allocates once. All are closed at the end.
 *
 * `trafficBytes` > 0: each tunnel first carries that many bytes each way (echoed by the console,
 * in 64 KiB writes), as a desktop session does before its user goes away; what the relay keeps
 * of the buffers that traffic needed is then counted too.
 */
export async function idleMemory(open: Opener, count: number, warmup: number, rssKiB: () => number, concurrency = 32, trafficBytes = 0): Promise<IdleRun> {
  const openOne = async (into: Conn[]): Promise<void> => {
    const c = await open();
    into.push(c);
    await expectBanner(c);
    if (trafficBytes > 0) {
      await c.write(Buffer.from('E'));
      const chunk = Buffer.alloc(Math.min(trafficBytes, 64 * 1024), 0x5a);
      const echoed = c.discard(trafficBytes);
      for (let sent = 0; sent < trafficBytes; sent += chunk.length) await c.write(chunk.subarray(0, Math.min(chunk.length, trafficBytes - sent)));
      await echoed;
    }
  };
  const openMany = async (n: number, into: Conn[]): Promise<void> => {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < n) {
        next++;
        await openOne(into);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  };
  const settle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const held: Conn[] = [];
  try {
    await openMany(warmup, held);
    for (const c of held.splice(0)) c.destroy();
    await settle(1000);
    const rssBeforeKiB = rssKiB();
    const t0 = process.hrtime.bigint();
    await openMany(count, held);
    const openSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    // Idle: whatever the relay frees once a tunnel is quiet (buffers, handshake state) is freed by now.
    await settle(2000);
    const rssAfterKiB = rssKiB();
    return { count, rssBeforeKiB, rssAfterKiB, perTunnelKiB: (rssAfterKiB - rssBeforeKiB) / count, openSeconds };
  } finally {
    for (const c of held) c.destroy();
    await settle(1000);
  }
}
