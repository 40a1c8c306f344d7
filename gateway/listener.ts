/**
 * The one port (CONTRACT section 1). Accepts TCP connections, peeks at their first bytes under a
 * deadline and a byte cap, asks the detectors in protocols/ what they are, and hands each
 * connection, with the peeked bytes put back, to its handler:
 *
 *   PROXY v1/v2  -> only from trusted addresses; header consumed, detection goes on
 *   TLS          -> terminated here (SNI-selected certificate, ALPN http/1.1), then HTTPS
 *   HTTP         -> the clear-text server (CONNECT with a ticket, redirect, or 400)
 *   RDP          -> native RDP (an MS-RDPEPS preconnection PDU or TPKT + X.224 Connection Request),
 *                   clear text, unless nativeRdp.enabled is false (gateway/rdp/native.ts)
 *   anything else, or silence until the deadline -> closed, counted, logged (rate-limited)
 *
 * Before any of that, at accept, a connection is admitted or refused (admission.ts: the per-address
 * limit and the fair share near the global cap), and again once a PROXY header named the client.
 * A refused connection is destroyed at once: it never holds a slot through the deadlines.
 *
 * Every socket gets its error listener before anything else happens to it.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Detection, Detector } from '../protocols/detector.js';
import { createProxyDetector, proxyDetector, type ProxyInfo } from '../protocols/proxy.js';
import { tlsDetector } from '../protocols/tls.js';
import { httpDetector } from '../protocols/http.js';
import { rdpDetector, rdpPreconnectionDetector } from '../protocols/rdp.js';
import type { GatewayContext } from './context.js';
import { type ConnInfo, newConnInfo, normaliseAddress, setConnInfo } from './conninfo.js';
import { parseCidr } from './config.js';
import type { Admission, Refusal } from './admission.js';
import { addressKey } from './address.js';

export type Route = 'tls' | 'http' | 'rdp';

export interface ListenerHandlers {
  /** A terminated TLS connection, ready for HTTP. */
  readonly onTls: (socket: tls.TLSSocket) => void;
  /** A clear-text HTTP connection, first bytes replayed. */
  readonly onHttp: (socket: net.Socket) => void;
  /** A native RDP connection (preconnection PDU or Connection Request), first bytes replayed, paused. */
  readonly onRdp: (socket: net.Socket) => void;
  readonly secureContext: (servername: string | undefined) => tls.SecureContext;
  /** Ask TLS clients for a certificate (verified against the secure context's CA, never required). */
  readonly requestClientCert?: boolean;
  /**
   * Addresses that speak for many clients and are not held to the per-address rules at accept
   * (cluster peers: their node-to-node hops carry other clients' tunnels). Trusted PROXY
   * balancers are exempt without being listed here.
   */
  readonly exempt?: (address: string) => boolean;
}

export type Candidate = { readonly route: Route | 'proxy'; readonly detector: Detector<unknown> };

/**
 * Tried in order; a PROXY header can only come first. `proxy` carries the configured v2 size bound;
 * `nativeRdp` (config nativeRdp.enabled) adds the two native RDP openings. No two detectors match
 * the same bytes: a preconnection PDU starts with an even byte and zeros where TLS and HTTP have
 * their version and method, and TPKT's 03 is odd.
 */
export function candidates(proxy: Detector<ProxyInfo> = proxyDetector, opts: { nativeRdp?: boolean } = {}): readonly Candidate[] {
  return [
    { route: 'proxy', detector: proxy as Detector<unknown> },
    { route: 'tls', detector: tlsDetector as Detector<unknown> },
    { route: 'http', detector: httpDetector as Detector<unknown> },
    ...(opts.nativeRdp ?? true
      ? ([
          { route: 'rdp', detector: rdpPreconnectionDetector as Detector<unknown> },
          { route: 'rdp', detector: rdpDetector as Detector<unknown> },
        ] as const)
      : []),
  ];
}

const DEFAULT_CANDIDATES = candidates();

export type Verdict =
  | { kind: 'route'; route: Route | 'proxy'; info: unknown }
  | { kind: 'reject' }
  | { kind: 'more' };

/** Pure: the three-way answers of all detectors folded into one decision. */
export function decide(head: Uint8Array, allowProxy: boolean, table: readonly Candidate[] = DEFAULT_CANDIDATES): Verdict {
  let more = false;
  for (const c of table) {
    if (c.route === 'proxy' && !allowProxy) continue;
    const d: Detection<unknown> = c.detector.detect(head);
    if (d.kind === 'match') return { kind: 'route', route: c.route, info: d.info };
    if (d.kind === 'more') more = true;
  }
  return more ? { kind: 'more' } : { kind: 'reject' };
}

/**
 * The bytes peeked so far. Storage grows by doubling, so a client trickling a long PROXY header
 * one byte per segment costs linear copying, not a copy of everything so far per byte. Buffers
 * handed in (the first chunk, the bytes after a PROXY header) are never written to: they are
 * copied on the first append.
 */
export class Peeked {
  private store: Buffer;
  private len: number;
  private owned = false;

  constructor(initial: Buffer) {
    this.store = initial;
    this.len = initial.length;
  }

  get length(): number {
    return this.len;
  }

  get bytes(): Buffer {
    return this.store.subarray(0, this.len);
  }

  append(chunk: Buffer): void {
    if (this.len === 0) {
      this.store = chunk;
      this.len = chunk.length;
      this.owned = false;
      return;
    }
    if (!this.owned || this.len + chunk.length > this.store.length) {
      const grown = Buffer.allocUnsafe(Math.max(2 * this.len, this.len + chunk.length));
      this.store.copy(grown, 0, 0, this.len);
      this.store = grown;
      this.owned = true;
    }
    chunk.copy(this.store, this.len);
    this.len += chunk.length;
  }
}

/** The PROXY balancers (config proxyProtocol.trusted) as a block list. */
/** The trusted PROXY balancers as a BlockList; undefined when there are none (no lookup per connection). */
export function trustedProxies(cidrs: readonly string[]): net.BlockList | undefined {
  const list = new net.BlockList();
  let any = false;
  for (const t of cidrs) {
    const c = parseCidr(t);
    if (c) {
      list.addSubnet(c.address, c.prefix, c.family);
      any = true;
    }
  }
  return any ? list : undefined;
}

/** A listening server's descriptor (Unix), to pass to a successor; undefined when not listening. */
export function serverFd(server: net.Server): number | undefined {
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

export function isListed(list: net.BlockList | undefined, address: string): boolean {
  return list !== undefined && list.check(address, net.isIPv6(address) ? 'ipv6' : 'ipv4');
}

export class Listener {
  readonly server: net.Server;
  private readonly counts: Admission;
  /** The key each open connection is counted under (moves when a PROXY header names the client). */
  private readonly countedAs = new Map<net.Socket, string>();
  private readonly sockets = new Set<net.Socket>();
  private readonly detecting = new Set<net.Socket>();
  private readonly trusted: net.BlockList | undefined;
  private readonly table: readonly Candidate[];

  constructor(
    private readonly ctx: GatewayContext,
    private readonly handlers: ListenerHandlers,
  ) {
    this.trusted = trustedProxies(ctx.config.proxyProtocol.trusted);
    // Shared with the parked sessions, which hold counts for the addresses that parked them.
    this.counts = ctx.connections;
    const { maxV2HeaderBytes } = ctx.config.proxyProtocol;
    this.table = candidates(createProxyDetector({ maxV2HeaderBytes }), { nativeRdp: ctx.config.nativeRdp.enabled });
    if (ctx.config.proxyProtocol.trusted.length > 0 && maxV2HeaderBytes > ctx.config.detect.maxBytes) {
      ctx.log.warn(
        { event: 'config-warning', maxV2HeaderBytes, detectMaxBytes: ctx.config.detect.maxBytes },
        'proxyProtocol.maxV2HeaderBytes is above detect.maxBytes: PROXY v2 headers longer than detect.maxBytes are still refused; raise both',
      );
    }
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false, noDelay: true }, (s) => this.accept(s));
    this.server.maxConnections = ctx.config.limits.maxConnections;
    this.server.on('drop', () => this.ctx.metrics.connections.inc({ result: 'dropped-max-connections' }));
  }

  /** Bind `host:port`, or take over the listening socket `fd` a predecessor passed on (same-host restart). */
  listen(host: string, port: number, fd?: number): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(fd !== undefined ? { fd } : { host, port }, () => {
        this.server.removeListener('error', reject);
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  /** Stop accepting; connections still being detected are closed. */
  stopAccepting(): Promise<void> {
    for (const s of this.detecting) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /**
   * Same-host restart: stop accepting here and leave connections in setup alone (a successor
   * holding the same listening socket takes the next ones). Idempotent.
   */
  handOff(): void {
    if (this.server.listening) this.server.close();
  }

  /** The listening socket's descriptor, to pass to a successor (Unix); undefined when not listening. */
  get fd(): number | undefined {
    return serverFd(this.server);
  }

  /** Destroy every connection still open (end of the drain period). */
  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => socket.destroy());
    const info = newConnInfo(socket.remoteAddress ?? 'unknown', socket.remotePort ?? 0);
    const key = addressKey(info.remoteAddress);
    // Refused before anything is read or any timer set: an address over its limit costs one
    // accept and one counter increment, and never holds a slot of limits.maxConnections.
    const refusal = this.admit(key, info.remoteAddress);
    if (refusal instanceof Promise) {
      void refusal.then((r) => this.admitted(socket, info, key, r));
      return;
    }
    this.admitted(socket, info, key, refusal);
  }

  /**
   * A connection the primary accepted, admitted and counted under `key` (workers): from here it
   * is served as if this listener had accepted it.
   */
  adopt(socket: net.Socket, key: string): void {
    socket.on('error', () => socket.destroy());
    // A socket passed between processes is made without the server's options.
    socket.allowHalfOpen = true;
    socket.setNoDelay(true);
    const info = newConnInfo(socket.remoteAddress ?? 'unknown', socket.remotePort ?? 0);
    this.admitted(socket, info, key, undefined);
  }

  /** Admit and count one connection from `key` (exempt addresses are counted, never refused). */
  private admit(key: string, address: string): Refusal | undefined | Promise<Refusal | undefined> {
    if (!this.exempt(address)) return this.counts.admit(key);
    this.counts.add(key);
    return undefined;
  }

  /** The counts' answer for `socket`: refused, gone meanwhile (count given back), or counted under `key` (true). */
  private counted(socket: net.Socket, info: ConnInfo, key: string, refusal: Refusal | undefined): boolean {
    if (refusal) {
      this.refuse(socket, info, refusal);
      return false;
    }
    if (socket.destroyed) {
      this.counts.remove(key);
      return false;
    }
    this.countedAs.set(socket, key);
    return true;
  }

  private admitted(socket: net.Socket, info: ConnInfo, key: string, refusal: Refusal | undefined): void {
    if (!this.counted(socket, info, key, refusal)) return;
    setConnInfo(socket, info);
    this.sockets.add(socket);
    this.ctx.metrics.connectionsActive.inc();
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.detecting.delete(socket);
      this.ctx.metrics.connectionsActive.dec();
      this.uncount(socket);
    });
    this.detect(socket, info);
  }

  /** Trusted PROXY balancers and the peers the gateway was told about speak for many clients. */
  private exempt(address: string): boolean {
    return this.isTrustedProxy(address) || (this.handlers.exempt?.(address) ?? false);
  }

  private isTrustedProxy(address: string): boolean {
    return isListed(this.trusted, address);
  }

  private uncount(socket: net.Socket): void {
    const key = this.countedAs.get(socket);
    if (key === undefined) return;
    this.countedAs.delete(socket);
    this.counts.remove(key);
  }

  private refuse(socket: net.Socket, info: ConnInfo, refusal: Refusal): void {
    this.reject(socket, info, refusal, Buffer.alloc(0), refusal === 'address-limit' ? 'connection refused: too many connections from this address' : 'connection refused: the port is nearly full and this address holds more than its share');
  }

  private detect(socket: net.Socket, info: ConnInfo, allowProxy = true, initial?: Buffer): void {
    const { timeoutMs, maxBytes } = this.ctx.config.detect;
    this.detecting.add(socket);
    const peeked = new Peeked(initial ?? Buffer.alloc(0));
    let done = false;
    const timer = setTimeout(() => finish({ kind: 'reject' }, 'timeout'), timeoutMs);
    const onData = (chunk: Buffer): void => {
      peeked.append(chunk);
      evaluate();
    };
    const onEnd = (): void => finish({ kind: 'reject' }, 'closed-early');
    const evaluate = (): void => {
      const v = decide(peeked.bytes.subarray(0, maxBytes), allowProxy, this.table);
      if (v.kind === 'more' && peeked.length < maxBytes) return;
      finish(v.kind === 'more' ? { kind: 'reject' } : v, v.kind === 'more' ? 'too-many-bytes' : 'unrecognised');
    };
    const finish = (v: Verdict, rejectReason: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onEnd);
      socket.pause();
      this.detecting.delete(socket);
      const head = peeked.bytes;
      if (v.kind !== 'route') {
        this.reject(socket, info, rejectReason, head);
        return;
      }
      this.ctx.metrics.observeSetup('detect', info.acceptedAt);
      if (v.route === 'proxy') {
        this.onProxy(socket, info, v.info as ProxyInfo, head);
        return;
      }
      this.ctx.metrics.connections.inc({ result: v.route });
      // Put back every byte we looked at: the next handler parses from the very first one.
      if (head.length > 0) socket.unshift(head);
      if (v.route === 'tls') this.terminateTls(socket, info);
      else if (v.route === 'http') this.handlers.onHttp(socket);
      else this.handlers.onRdp(socket);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    // A reset (error, then close, no 'end') must not leave the deadline timer and this closure
    // alive until detect.timeoutMs, nor be counted later as a timeout.
    socket.on('close', onEnd);
    if (peeked.length > 0) evaluate();
  }

  private onProxy(socket: net.Socket, info: ConnInfo, proxy: ProxyInfo, head: Buffer): void {
    if (!this.isTrustedProxy(info.remoteAddress)) {
      this.reject(socket, info, 'proxy-untrusted', head);
      return;
    }
    this.ctx.metrics.connections.inc({ result: 'proxy' });
    if (proxy.source) {
      // The balancer's own address carries everyone's connections (it was not held to the
      // per-address rules at accept): the connection now counts for the client the header names,
      // and is admitted or refused for it, like any connection at accept.
      this.uncount(socket);
      info.remoteAddress = normaliseAddress(proxy.source.address);
      info.remotePort = proxy.source.port;
      const key = addressKey(info.remoteAddress);
      const refusal = this.admit(key, info.remoteAddress);
      if (refusal instanceof Promise) {
        void refusal.then((r) => this.proxied(socket, info, key, r, head.subarray(proxy.headerLength)));
        return;
      }
      this.proxied(socket, info, key, refusal, head.subarray(proxy.headerLength));
      return;
    }
    socket.resume();
    this.detect(socket, info, false, head.subarray(proxy.headerLength));
  }

  /** After a PROXY header named the client `key`: its answer from the counts. */
  private proxied(socket: net.Socket, info: ConnInfo, key: string, refusal: Refusal | undefined, rest: Buffer): void {
    if (!this.counted(socket, info, key, refusal)) return;
    socket.resume();
    this.detect(socket, info, false, rest);
  }

  private reject(socket: net.Socket, info: ConnInfo, reason: string, head: Buffer, message = 'connection closed: protocol not recognised'): void {
    this.ctx.metrics.connections.inc({ result: `rejected-${reason}` });
    const suppressed = this.ctx.noisyLog.take(`reject:${reason}`);
    if (suppressed >= 0) {
      this.ctx.log.info(
        { event: 'connection-rejected', reason, client: info.remoteAddress, firstBytes: head.subarray(0, 8).toString('hex'), suppressed },
        message,
      );
    }
    socket.destroy();
  }

  private terminateTls(raw: net.Socket, info: ConnInfo): void {
    const started = process.hrtime.bigint();
    const tlsSocket = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: this.handlers.secureContext(undefined),
      SNICallback: (servername, cb) => cb(null, this.handlers.secureContext(servername)),
      ALPNProtocols: ['http/1.1'],
      requestCert: this.handlers.requestClientCert ?? false,
      rejectUnauthorized: false,
    });
    let secured = false;
    tlsSocket.on('error', () => {
      if (!secured) this.ctx.metrics.tlsErrors.inc();
      tlsSocket.destroy();
      raw.destroy();
    });
    let timer: NodeJS.Timeout | undefined = setTimeout(() => {
      this.ctx.metrics.tlsErrors.inc();
      tlsSocket.destroy();
      raw.destroy();
    }, this.ctx.config.tls.handshakeTimeoutMs);
    const onRawClose = (): void => clearTimeout(timer);
    raw.on('close', onRawClose);
    // A client that hangs up mid-handshake is gone; do not wait for the handshake deadline.
    const onEarlyEnd = (): void => void tlsSocket.destroy();
    tlsSocket.on('end', onEarlyEnd);
    tlsSocket.once('secure', () => {
      secured = true;
      clearTimeout(timer);
      // Neither the timer nor these two are needed once secure: dropped, the closures that stay
      // (error, close) do not keep them for the tunnel's life (memory per idle tunnel).
      timer = undefined;
      raw.removeListener('close', onRawClose);
      tlsSocket.removeListener('end', onEarlyEnd);
      const tinfo: ConnInfo = { ...info, tls: true, servername: tlsSocket.servername || undefined };
      setConnInfo(tlsSocket, tinfo);
      this.ctx.metrics.observeSetup('tls', started);
      this.handlers.onTls(tlsSocket);
    });
    tlsSocket.on('close', () => raw.destroy());
  }
}
