/**
 * An RD Gateway client for tests, speaking what FreeRDP 2.11.7 sends (test/fixtures/rdp-packets.ts):
 * `RDG_OUT_DATA` upgraded to a WebSocket (masked frames, a 15-character key that is not base64),
 * or the legacy pair (OUT answered 200 + 10-byte seed + chunked packets; IN probed with
 * Content-Length: 0, then sent chunked). Packets are built with protocols/tsgu.ts; everything
 * read has a deadline, so a gateway that hangs fails the test instead of stalling it.
 */
import tls from 'node:tls';
import { once } from 'node:events';
import {
  type TsguPacket, ExtendedAuth, decodePacket, encodePacket, framePacket, parseChunk, websocketAccept,
} from '../../protocols/tsgu.js';
import { Opcode, encodeClientFrame } from '../../protocols/websocket-frame.js';
import { toUtf16z } from '../../protocols/parse.js';
import { type ByteQueue, streamQueue } from './bytes.js';

export const RDG_KEY = 'ZZIGAOZUBBAPOFV';
const TIMEOUT_MS = 10_000;

export interface RdgHead {
  readonly status: number;
  readonly head: string;
}

export function rdgRequest(method: 'RDG_OUT_DATA' | 'RDG_IN_DATA', connectionId: string, extra: string[] = []): string {
  return [
    `${method} /remoteDesktopGateway/ HTTP/1.1`,
    'Cache-Control: no-cache',
    'Accept: */*',
    'User-Agent: MS-RDGateway/1.0',
    'Host: 127.0.0.1',
    `RDG-Connection-Id: {${connectionId}}`,
    'RDG-Auth-Scheme: PAA',
    ...extra,
    '',
    '',
  ].join('\r\n');
}

export async function tlsTo(port: number, ca: string, opts: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  const s = tls.connect({ port, host: '127.0.0.1', ca, servername: 'localhost', ...opts });
  s.on('error', () => undefined);
  await once(s, 'secureConnect');
  return s;
}

/** An HTTP response head, read byte by byte from the queue (the body stays queued). */
export async function readHead(q: ByteQueue, timeoutMs = TIMEOUT_MS): Promise<RdgHead> {
  let text = '';
  while (!text.endsWith('\r\n\r\n')) {
    text += (await q.read(1, timeoutMs, 'an HTTP response head')).toString('latin1');
    if (text.length > 8192) throw new Error('response head too large');
  }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), head: text };
}

export abstract class RdgClient {
  abstract readonly socket: tls.TLSSocket;
  /** Send raw MS-TSGU bytes (one or several packets, or junk) in this transport's framing. */
  abstract sendBytes(bytes: Buffer): void;
  /** The next bytes of the gateway's MS-TSGU stream, as they were framed. */
  protected abstract readStream(n: number, timeoutMs: number): Promise<Buffer>;

  send(p: TsguPacket): void {
    this.sendBytes(encodePacket(p));
  }

  /** The next packet from the gateway. */
  async next(timeoutMs = TIMEOUT_MS): Promise<TsguPacket> {
    const header = await this.readStream(8, timeoutMs);
    const f = framePacket(header, 0xffffffff);
    if (f.kind === 'error') throw new Error(`bad packet header ${header.toString('hex')}`);
    const length = header.readUInt32LE(4);
    const body = length > 8 ? await this.readStream(length - 8, timeoutMs) : Buffer.alloc(0);
    const d = decodePacket(Buffer.concat([header, body]), 0xffffffff);
    if (d.kind !== 'done') throw new Error(`undecodable packet ${header.toString('hex')}`);
    return d.value;
  }

  /** Handshake, tunnel create with `cookie`, tunnel authorize, channel create for `vm`: the channel response. */
  async open(cookie: string, vm: string, port = 3389): Promise<TsguPacket> {
    this.send({ type: 'handshake-request', versionMajor: 1, versionMinor: 0, clientVersion: 0, extendedAuth: ExtendedAuth.PAA });
    const hs = await this.next();
    if (hs.type !== 'handshake-response' || hs.errorCode !== 0) return hs;
    this.send({ type: 'tunnel-create', capabilities: 0x0d, paaCookie: toUtf16z(cookie) });
    const tr = await this.next();
    if (tr.type !== 'tunnel-response' || tr.statusCode !== 0) return tr;
    this.send({ type: 'tunnel-auth', clientName: 'test' });
    const ar = await this.next();
    if (ar.type !== 'tunnel-auth-response' || ar.errorCode !== 0) return ar;
    this.send({ type: 'channel-create', resources: [vm], altResources: [], port, protocol: 3 });
    return this.next();
  }

  /** Data packets until `n` RDP bytes came (other packets are skipped). */
  async readData(n: number, timeoutMs = TIMEOUT_MS): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const p = await this.next(timeoutMs);
      if (p.type === 'data') {
        parts.push(Buffer.from(p.data));
        got += p.data.length;
      } else if (p.type !== 'keepalive') {
        throw new Error(`expected data, got ${p.type}`);
      }
    }
    return Buffer.concat(parts);
  }

  /** Resolves when the gateway closed the connection(s). */
  abstract closed(timeoutMs?: number): Promise<void>;

  destroy(): void {
    this.socket.destroy();
  }
}

export class RdgWebSocketClient extends RdgClient {
  private readonly q: ByteQueue;
  private pending = Buffer.alloc(0);
  /** Control frames the gateway sent (opcode, payload). */
  readonly control: Array<{ opcode: number; payload: Buffer }> = [];

  private constructor(readonly socket: tls.TLSSocket, readonly upgrade: RdgHead) {
    super();
    this.q = streamQueue(socket);
  }

  static async connect(port: number, ca: string, key = RDG_KEY): Promise<RdgWebSocketClient> {
    const socket = await tlsTo(port, ca);
    socket.write(rdgRequest('RDG_OUT_DATA', 'a44b7348-a198-3b59-dd29-fae03345519e', ['Connection: Upgrade', 'Upgrade: websocket', 'Sec-Websocket-Version: 13', `Sec-Websocket-Key: ${key}`, 'Content-Length: 0']));
    const q = streamQueue(socket);
    const head = await readHead(q);
    const c = new RdgWebSocketClient(socket, head);
    if (head.status === 101 && !head.head.includes(`Sec-WebSocket-Accept: ${websocketAccept(key)}`)) throw new Error(`wrong Sec-WebSocket-Accept in ${head.head}`);
    return c;
  }

  sendBytes(bytes: Buffer): void {
    this.socket.write(encodeClientFrame(Opcode.BINARY, bytes));
  }

  sendFrame(frame: Buffer): void {
    this.socket.write(frame);
  }

  /** The next server frame (unmasked), whatever its opcode. */
  async frame(timeoutMs = TIMEOUT_MS): Promise<{ opcode: number; payload: Buffer }> {
    const h = await this.q.read(2, timeoutMs, 'a frame header');
    let n = h[1]! & 0x7f;
    if (n === 126) n = (await this.q.read(2, timeoutMs)).readUInt16BE(0);
    else if (n === 127) n = Number((await this.q.read(8, timeoutMs)).readBigUInt64BE(0));
    const payload = n > 0 ? await this.q.read(n, timeoutMs, 'a frame payload') : Buffer.alloc(0);
    return { opcode: h[0]! & 0x0f, payload };
  }

  protected async readStream(n: number, timeoutMs: number): Promise<Buffer> {
    while (this.pending.length < n) {
      const f = await this.frame(timeoutMs);
      if (f.opcode === Opcode.BINARY || f.opcode === Opcode.CONTINUATION) this.pending = Buffer.concat([this.pending, f.payload]);
      else if (f.opcode === Opcode.PING) this.socket.write(encodeClientFrame(Opcode.PONG, f.payload));
      else {
        this.control.push(f);
        if (f.opcode === Opcode.CLOSE) throw new Error(`closed by the gateway: ${f.payload.length >= 2 ? f.payload.readUInt16BE(0) : ''}`);
      }
    }
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    return out;
  }

  async closed(timeoutMs = TIMEOUT_MS): Promise<void> {
    await this.q.rest(timeoutMs);
  }
}

export class RdgLegacyClient extends RdgClient {
  private readonly outQ: ByteQueue;
  private pending = Buffer.alloc(0);
  private raw = Buffer.alloc(0);

  private constructor(readonly socket: tls.TLSSocket, readonly inSocket: tls.TLSSocket, readonly outHead: RdgHead, readonly seed: Buffer) {
    super();
    this.outQ = streamQueue(socket);
  }

  /** OUT on `ports[0]`, IN (probe, then chunked) on `ports[1]`. */
  static async connect(ports: readonly [number, number], ca: string, connectionId = 'cafe0000-0000-0000-0000-000000000001'): Promise<RdgLegacyClient> {
    const out = await tlsTo(ports[0], ca);
    out.write(rdgRequest('RDG_OUT_DATA', connectionId, ['Connection: Keep-Alive', 'Content-Length: 0']));
    const outQ = streamQueue(out);
    const outHead = await readHead(outQ);
    if (outHead.status !== 200) throw new Error(`OUT answered ${outHead.head}`);
    const inSocket = await tlsTo(ports[1], ca);
    inSocket.write(rdgRequest('RDG_IN_DATA', connectionId, ['Connection: Keep-Alive', 'Content-Length: 0']));
    const inHead = await readHead(streamQueue(inSocket));
    if (inHead.status !== 200) throw new Error(`IN probe answered ${inHead.head}`);
    inSocket.write(rdgRequest('RDG_IN_DATA', connectionId, ['Connection: Keep-Alive', 'Transfer-Encoding: chunked']));
    const c = new RdgLegacyClient(out, inSocket, outHead, Buffer.alloc(0));
    const seed = await c.readStream(10, TIMEOUT_MS);
    return Object.assign(c, { seed });
  }

  sendBytes(bytes: Buffer): void {
    this.inSocket.write(Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from('\r\n')]));
  }

  /** Dechunk the OUT response body. */
  protected async readStream(n: number, timeoutMs: number): Promise<Buffer> {
    while (this.pending.length < n) {
      const c = parseChunk(this.raw, 0x20000);
      if (c.kind === 'error') throw new Error(`bad chunk from the gateway: ${c.code}`);
      if (c.kind === 'more') {
        this.raw = Buffer.concat([this.raw, await this.outQ.read(Math.max(1, this.outQ.length), timeoutMs, 'chunked OUT body')]);
        continue;
      }
      this.raw = this.raw.subarray(c.length);
      if (c.value.last) throw new Error('the gateway ended the OUT body');
      this.pending = Buffer.concat([this.pending, c.value.data]);
    }
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    return out;
  }

  async closed(timeoutMs = TIMEOUT_MS): Promise<void> {
    await this.outQ.rest(timeoutMs);
  }

  override destroy(): void {
    this.socket.destroy();
    this.inSocket.destroy();
  }
}
