/**
 * A stream client leg: HTTP CONNECT, in clear text or inside TLS, and the node-to-node hop.
 * "Yes" is `HTTP/1.1 200 Connection established` and raw bytes both ways from there on; "no" is a
 * complete HTTP answer (407 + Proxy-Authenticate for "who are you?", CONTRACT section 3).
 */
import type net from 'node:net';
import type { OneportError } from '../../errors.js';
import { writeRawError } from '../../http/respond.js';
import { StreamPump } from '../pump.js';
import type { ReachedConsole } from '../reach.js';
import { ReachFailure } from '../failures.js';
import type { Transport } from '../request.js';
import type { AttachOptions, ClientLeg } from './leg.js';

export interface StreamLegOptions {
  readonly transport: Transport;
  readonly client: string;
  readonly acceptedAt: bigint;
  /** Bytes the client sent after its request head, before the tunnel existed. */
  readonly head: Buffer;
  /** The hop: refusals carry `Oneport-Error: <code>` for the sending node, and are not proxy answers. */
  readonly hop?: { readonly from: string } | undefined;
}

export class StreamLeg implements ClientLeg {
  readonly transport: Transport;
  readonly client: string;
  readonly acceptedAt: bigint;
  readonly logFields: Readonly<Record<string, unknown>> | undefined;
  private readonly abort = new AbortController();
  private readonly onClose = (): void => this.abort.abort();

  constructor(
    private readonly socket: net.Socket,
    private readonly opts: StreamLegOptions,
  ) {
    this.transport = opts.transport;
    this.client = opts.client;
    this.acceptedAt = opts.acceptedAt;
    this.logFields = opts.hop ? { from: opts.hop.from } : undefined;
    socket.once('close', this.onClose);
  }

  get gone(): AbortSignal {
    return this.abort.signal;
  }

  attach(console: ReachedConsole, _target: unknown, attachOpts: AttachOptions): StreamPump {
    this.socket.removeListener('close', this.onClose);
    if (this.socket.destroyed) throw new ReachFailure('CLIENT_GONE', { message: this.opts.hop ? 'the sending node went away' : 'client went away' });
    this.socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
    return new StreamPump(this.socket, console.socket, { idleTimeoutMs: attachOpts.idleTimeoutMs, halfCloseMs: attachOpts.halfCloseMs, preface: console.preface }, this.opts.head);
  }

  refuse(err: OneportError): void {
    this.socket.removeListener('close', this.onClose);
    if (this.opts.hop) writeRawError(this.socket, err, { extraHeaders: { 'Oneport-Error': err.code } });
    else writeRawError(this.socket, err, { proxy: true });
  }
}
