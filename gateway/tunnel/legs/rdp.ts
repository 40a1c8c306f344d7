/**
 * A native RDP client leg (gateway/rdp/native.ts): a stock RDP client that connected to the one
 * port in clear text. "Yes" is the client's own Connection Request, its ticket taken out
 * (protocols/rdp.ts `requestForConsole`), written to the console, then raw bytes both ways: the
 * console's Connection Confirm is the client's first answer. "No" is an X.224 Connection Confirm
 * with RDP_NEG_FAILURE, written at once, then the end of the connection: at this point an RDP
 * client understands nothing else, and it must never be left waiting.
 */
import type net from 'node:net';
import { OneportError } from '../../errors.js';
import { endThenDrop } from '../../http/respond.js';
import { NegFailureCode, buildNegotiationFailure } from '../../../protocols/rdp.js';
import { StreamPump } from '../pump.js';
import type { ReachedConsole } from '../reach.js';
import { ReachFailure } from '../failures.js';
import type { TunnelTarget } from '../request.js';
import type { AttachOptions, ClientLeg } from './leg.js';

/**
 * None of the failure codes (MS-RDPBCGR 2.2.1.2.2) means "refused"; INCONSISTENT_FLAGS is the one
 * tied to no security layer, so no client reads it as advice to change its settings. Every
 * refusal gets the same bytes, so the answer says nothing about which VMs exist.
 */
export const REFUSAL_FAILURE_CODE = NegFailureCode.INCONSISTENT_FLAGS;
export const REFUSAL = buildNegotiationFailure(REFUSAL_FAILURE_CODE);

export interface RdpLegOptions {
  readonly client: string;
  readonly acceptedAt: bigint;
  /** What the console gets first: the Connection Request without the ticket, then whatever the client sent after it. */
  readonly toConsole: Buffer;
}

export class RdpLeg implements ClientLeg {
  readonly transport = 'rdp' as const;
  readonly client: string;
  readonly acceptedAt: bigint;
  private readonly abort = new AbortController();
  private readonly onClose = (): void => this.abort.abort();

  constructor(
    private readonly socket: net.Socket,
    private readonly opts: RdpLegOptions,
  ) {
    this.client = opts.client;
    this.acceptedAt = opts.acceptedAt;
    socket.once('close', this.onClose);
  }

  get gone(): AbortSignal {
    return this.abort.signal;
  }

  /** A VM whose record says `nativeRdp: false` takes RDP only through the TLS entrances. */
  admit(target: TunnelTarget): void {
    if (target.vm.nativeRdp === false) throw new OneportError('ONEPORT_ERR_FORBIDDEN', 'native RDP is turned off for this VM');
  }

  attach(console: ReachedConsole, _target: TunnelTarget, attachOpts: AttachOptions): StreamPump {
    this.socket.removeListener('close', this.onClose);
    if (this.socket.destroyed) throw new ReachFailure('CLIENT_GONE', { message: 'client went away' });
    return new StreamPump(this.socket, console.socket, { idleTimeoutMs: attachOpts.idleTimeoutMs, halfCloseMs: attachOpts.halfCloseMs, preface: console.preface }, this.opts.toConsole);
  }

  refuse(_err: OneportError): void {
    this.socket.removeListener('close', this.onClose);
    if (this.socket.destroyed || !this.socket.writable) this.socket.destroy();
    else endThenDrop(this.socket, REFUSAL);
  }
}
