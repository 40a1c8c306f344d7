/**
 * The RDCleanPath client leg (IronRDP's web client, protocols/rdcleanpath.ts): a WebSocket whose
 * first message(s) carry one DER request PDU, then the RDP stream in clear (inside the browser's
 * wss://). The gateway, not the browser, speaks X.224 and TLS with the console:
 *
 *   request  -> readRequest: the whole PDU within a deadline and a byte cap, decoded and checked
 *   (broker: authorize the proxy_auth ticket or resume token, reach the console from the directory)
 *   handshake -> write the client's X.224 Connection Request, read the Connection Confirm (bounded),
 *                TLS with the console (any certificate: the console is the directory's), within
 *                tunnel.dialTimeoutMs
 *   attach   -> answer with the Connection Confirm and the console's certificate chain, then relay
 *               the WebSocket to and from the TLS session (WebSocketPump: backpressure, idle)
 *   refuse   -> an RDCleanPath error PDU (general error with the HTTP status of the OneportError,
 *               or a negotiation error carrying the console's RDP_NEG_FAILURE), then the close code
 *
 * The destination the client names is never looked at: the console is the VM's in the directory.
 */
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { WebSocket } from 'ws';
import { OneportError } from '../../errors.js';
import {
  RDCLEANPATH_GENERAL_ERROR,
  RDCLEANPATH_LIMITS,
  RDCLEANPATH_REQUEST_LIMITS,
  type RdcleanpathMessage,
  decodeRdcleanpath,
  encodeRdcleanpath,
  rdcleanpathFrame,
  rdcleanpathMessage,
  rdcleanpathPdu,
} from '../../../protocols/rdcleanpath.js';
import { RdpProtocol, X224_MAX_LENGTH, parseConnectionConfirm, parseConnectionRequest } from '../../../protocols/rdp.js';
import { wsCloseFor } from '../close.js';
import type { ConsoleStream } from '../console-stream.js';
import { ReachFailure } from '../failures.js';
import { type CloseReason, type Pump, WebSocketPump } from '../pump.js';
import { NO_PREFACE, type ReachedConsole } from '../reach.js';
import type { TunnelTarget } from '../request.js';
import type { AttachOptions, ClientLeg } from './leg.js';
import { EarlyWebSocketLeg, keepAlive } from './websocket.js';

export interface RdcleanpathLegOptions {
  readonly client: string;
  readonly acceptedAt: bigint;
  readonly pingIntervalMs: number;
  readonly rerouteRetryMs: number;
  /** The whole request PDU must arrive within this. */
  readonly requestTimeoutMs: number;
  /** X.224 and TLS with the console must be done within this. */
  readonly handshakeTimeoutMs: number;
  /** Bytes kept from the client after its request, before the console answered. */
  readonly preConnectBufferBytes: number;
}

/** What the gateway needs from a request: its credential and the X.224 Connection Request to forward. */
export interface RdcleanpathRequest {
  readonly proxyAuth: string;
  readonly x224ConnectionRequest: Buffer;
}

/** The console refused the client's RDP negotiation: the client gets its RDP_NEG_FAILURE as it is. */
class NegotiationRefused extends ReachFailure {
  constructor(readonly confirm: Buffer) {
    super('CONSOLE_HANDSHAKE', { message: 'the console refused the RDP security protocols the client offered' });
  }
}

const bad = (message: string): OneportError => new OneportError('ONEPORT_ERR_BAD_REQUEST', message);

export class RdcleanpathLeg extends EarlyWebSocketLeg implements ClientLeg {
  readonly transport = 'rdcleanpath' as const;
  /** The client's request, once read (for `handshake`). */
  private request: RdcleanpathRequest | undefined;
  /** The answer for `attach`, made by `handshake`. */
  private response: Buffer | undefined;

  constructor(
    ws: WebSocket,
    private readonly opts: RdcleanpathLegOptions,
  ) {
    // The request PDU, then what the client sends before the console answered.
    super(ws, opts, RDCLEANPATH_REQUEST_LIMITS.pduBytes + opts.preConnectBufferBytes);
  }

  /**
   * The client's request PDU: whole within `requestTimeoutMs` and the request caps, strict DER,
   * version 3390, a plain request (not VMConnect) without a preconnection blob, carrying one
   * X.224 Connection Request that offers TLS. Bytes after it stay queued for the console.
   */
  async readRequest(): Promise<RdcleanpathRequest> {
    const pdu = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => finish(new OneportError('ONEPORT_ERR_BAD_REQUEST', 'no whole RDCleanPath request within the deadline')), this.opts.requestTimeoutMs);
      const finish = (result: Buffer | OneportError): void => {
        clearTimeout(timer);
        this.onBytes = undefined;
        if (result instanceof OneportError) reject(result);
        else resolve(result);
      };
      const check = (): void => {
        if (this.gone.aborted) return finish(new ReachFailure('CLIENT_GONE'));
        const bytes = Buffer.concat(this.queued);
        const frame = rdcleanpathFrame(bytes, RDCLEANPATH_REQUEST_LIMITS);
        if (frame.kind === 'error') {
          return finish(new OneportError(frame.code === 'too-large' ? 'ONEPORT_ERR_PAYLOAD_TOO_LARGE' : 'ONEPORT_ERR_BAD_REQUEST', `not an RDCleanPath request: ${frame.reason}`));
        }
        if (this.overflow) return finish(new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE', 'RDCleanPath request too large'));
        if (frame.kind === 'more') return;
        this.queued = frame.length < bytes.length ? [bytes.subarray(frame.length)] : [];
        this.queuedBytes = bytes.length - frame.length;
        finish(bytes.subarray(0, frame.length));
      };
      this.onBytes = check;
      check();
    });
    const decoded = decodeRdcleanpath(pdu, RDCLEANPATH_REQUEST_LIMITS);
    if (decoded.kind !== 'done') throw bad(decoded.kind === 'error' ? `bad RDCleanPath request: ${decoded.reason}` : 'bad RDCleanPath request');
    const message = rdcleanpathMessage(decoded.value);
    if (!message.ok) throw bad(`bad RDCleanPath request: ${message.reason}`);
    this.request = checkRequest(message.value);
    return this.request;
  }

  async handshake(reached: ReachedConsole, target: TunnelTarget): Promise<ReachedConsole> {
    const raw = reached.socket;
    const deadline = AbortSignal.any([AbortSignal.timeout(this.opts.handshakeTimeoutMs), this.gone]);
    const stage = (failure: string): ReachFailure =>
      this.gone.aborted ? new ReachFailure('CLIENT_GONE') : new ReachFailure('CONSOLE_HANDSHAKE', { message: `${failure}${deadline.aborted ? ' within the deadline' : ''}` });
    const request = this.request;
    if (!request) throw new OneportError('ONEPORT_ERR_INTERNAL', 'handshake before the request was read');
    raw.write(request.x224ConnectionRequest);
    const confirm = await readConfirm(raw, deadline).catch((e: unknown) => {
      throw e instanceof OneportError ? e : stage('the console did not answer the X.224 Connection Request');
    });
    const cc = parseConnectionConfirm(confirm);
    if (cc.kind !== 'done') throw stage('the console answered with something other than an X.224 Connection Confirm');
    const negotiation = cc.value.negotiation;
    if (negotiation?.type === 'failure') throw new NegotiationRefused(confirm);
    if (!negotiation || negotiation.selectedProtocol === RdpProtocol.RDP) {
      throw stage('the console chose standard RDP security, which RDCleanPath cannot carry (it needs TLS)');
    }
    const secure = await startTls(raw, deadline).catch(() => {
      throw stage('the TLS handshake with the console failed');
    });
    const chain = certificateChain(secure);
    const answer = encodeRdcleanpath(
      rdcleanpathPdu({ type: 'response', x224ConnectionResponse: confirm, serverCertChain: chain, serverAddr: `${target.vm.name}:${target.endpoint.publishedPort}` }),
      RDCLEANPATH_LIMITS,
    );
    if (!answer.ok) {
      secure.destroy();
      throw stage(`the console's certificate chain does not fit an RDCleanPath answer (${answer.reason})`);
    }
    this.response = answer.value;
    return { socket: secure, preface: NO_PREFACE };
  }

  attach(console: ReachedConsole, _target: TunnelTarget, attachOpts: AttachOptions): Pump {
    this.detach();
    if (this.ws.readyState !== WebSocket.OPEN) throw new ReachFailure('CLIENT_GONE');
    if (this.overflow) throw new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE', 'too much data before the console answered');
    if (!this.response) throw new OneportError('ONEPORT_ERR_INTERNAL', 'attach before the console handshake');
    this.ws.send(this.response, { binary: true });
    const { rerouteRetryMs } = this.opts;
    const closeFor = (why: CloseReason): { code: number; message: string } => wsCloseFor(why, rerouteRetryMs);
    const pump = new WebSocketPump(this.ws, console.socket, { idleTimeoutMs: attachOpts.idleTimeoutMs, wsCloseFor: closeFor, judgeConsoleEnd: attachOpts.endJudge, preface: console.preface }, this.queued);
    keepAlive(this.ws, this.opts.pingIntervalMs);
    return pump;
  }

  refuse(err: OneportError): void {
    this.detach();
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const message: RdcleanpathMessage =
      err instanceof NegotiationRefused
        ? { type: 'negotiation-error', x224ConnectionResponse: err.confirm }
        : { type: 'general-error', error: { errorCode: RDCLEANPATH_GENERAL_ERROR, httpStatusCode: err.status } };
    const pdu = encodeRdcleanpath(rdcleanpathPdu(message));
    if (pdu.ok) this.ws.send(pdu.value, { binary: true });
    // The close code says the rest (4401, 4503...), as on /tunnel: the viewer reads it.
    const reason = err.retryAfter === undefined ? err.code : JSON.stringify({ code: err.code, retryMs: err.retryAfter * 1000 });
    this.ws.close(err.wsClose, reason.slice(0, 120));
  }
}

/** A request we serve: ordinary (X.224, no VMConnect), no preconnection blob, a Connection Request offering TLS. */
function checkRequest(message: RdcleanpathMessage): RdcleanpathRequest {
  if (message.type === 'vmconnect-request') throw bad('VMConnect (Hyper-V console) requests are not served');
  if (message.type !== 'request') throw bad(`an RDCleanPath ${message.type}, not a request`);
  // A preconnection blob picks a VM behind a Hyper-V host or a load balancer: the directory does that here.
  if (message.preconnectionBlob !== undefined && message.preconnectionBlob !== '') throw bad('preconnection blobs are not accepted: the gateway chooses the console');
  const cr = parseConnectionRequest(message.x224ConnectionRequest);
  if (cr.kind !== 'done') throw bad(`x224_connection_pdu is not an X.224 Connection Request${cr.kind === 'error' ? ` (${cr.reason})` : ' (cut short)'}`);
  if (cr.length !== message.x224ConnectionRequest.length) throw bad('x224_connection_pdu has bytes after the Connection Request');
  const requested = cr.value.negotiation?.requestedProtocols ?? RdpProtocol.RDP;
  if ((requested & (RdpProtocol.SSL | RdpProtocol.HYBRID | RdpProtocol.HYBRID_EX)) === 0) throw bad('the Connection Request offers no TLS-based security; RDCleanPath needs TLS');
  return { proxyAuth: message.proxyAuth, x224ConnectionRequest: message.x224ConnectionRequest };
}

/** The console's X.224 Connection Confirm: one TPKT, at most X224_MAX_LENGTH bytes, nothing after it. */
function readConfirm(socket: ConsoleStream, signal: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const stop = (e?: unknown, value?: Buffer): void => {
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      socket.removeListener('error', onError);
      signal.removeEventListener('abort', onClose);
      if (value) {
        socket.pause();
        resolve(value);
      } else reject(e);
    };
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const cc = parseConnectionConfirm(got);
      if (cc.kind === 'more' && got.length < X224_MAX_LENGTH) return;
      if (cc.kind === 'done' && cc.length === got.length) return stop(undefined, got);
      // Too long, not a Confirm, or bytes after it before we spoke TLS: a Confirm is what we relay.
      stop(new ReachFailure('CONSOLE_HANDSHAKE', { message: 'the console answered with something other than one X.224 Connection Confirm' }));
    };
    const onClose = (): void => stop(new Error('closed'));
    const onError = (e: Error): void => stop(e);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onError);
    signal.addEventListener('abort', onClose, { once: true });
    socket.resume();
  });
}

/**
 * TLS with the console over the socket that carried X.224. RDP consoles present self-signed
 * certificates; this one is the directory's, so it is not verified here: the client gets the
 * chain (and checks it as it sees fit, IronRDP binds CredSSP to its key).
 */
function startTls(socket: ConsoleStream, signal: AbortSignal): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ socket, rejectUnauthorized: false });
    const fail = (e: unknown): void => {
      signal.removeEventListener('abort', onAbort);
      secure.destroy();
      reject(e);
    };
    const onAbort = (): void => fail(new Error('deadline'));
    secure.once('error', fail);
    signal.addEventListener('abort', onAbort, { once: true });
    secure.once('secureConnect', () => {
      signal.removeEventListener('abort', onAbort);
      secure.removeListener('error', fail);
      resolve(secure);
    });
  });
}

/** The console's certificate chain as DER, leaf first, within the RDCleanPath caps. */
function certificateChain(secure: tls.TLSSocket): Buffer[] {
  const chain: Buffer[] = [];
  let cert: X509Certificate | undefined = secure.getPeerX509Certificate();
  const seen = new Set<string>();
  while (cert && chain.length < RDCLEANPATH_LIMITS.certs && !seen.has(cert.fingerprint256)) {
    seen.add(cert.fingerprint256);
    chain.push(cert.raw);
    cert = cert.issuerCertificate;
  }
  return chain;
}
