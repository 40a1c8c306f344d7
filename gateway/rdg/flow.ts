/**
 * The gateway's side of the MS-TSGU packet flow (HTTP transport, 3.3.5 and 3.7.5), pure: packets
 * in, answers and decisions out, no I/O. The order is fixed by the spec:
 *
 *   handshake -> tunnel create (PAA cookie) -> tunnel authorize -> channel create -> data ... close
 *
 * A packet out of order, or of a kind the client never sends, is a violation: the tunnel ends.
 * Whoever drives the flow decides the two questions it cannot answer alone: is the PAA cookie a
 * console ticket worth going on with (`tunnel`), and does the channel's resource open (`channel`).
 * A refusal is always a whole answer to the packet being answered, with a full HRESULT (FreeRDP
 * tests FAILED(hr): the short HRESULT_CODE forms would read as success), never silence.
 */
import {
  type TsguPacket, CHANNEL_PROTOCOL_RDP, Capability, ExtendedAuth, HResult, RedirFlag, encodePacket,
} from '../../protocols/tsgu.js';
import { utf16z } from '../../protocols/parse.js';

export type Stage = 'handshake' | 'tunnel-create' | 'tunnel-auth' | 'channel-create' | 'opening' | 'open' | 'closing' | 'closed';

export type Step =
  /** Send these packets (maybe none) and go on reading. */
  | { readonly kind: 'answer'; readonly packets: readonly Buffer[] }
  /** Tunnel create: judge the cookie, then call tunnelAccepted() or refusal(). */
  | { readonly kind: 'tunnel'; readonly cookie: string | undefined }
  /** Channel create: open the channel to this resource, then call channelOpened() or refusal(). */
  | { readonly kind: 'channel'; readonly resource: string; readonly port: number }
  /** RDP bytes for the console. */
  | { readonly kind: 'data'; readonly data: Uint8Array }
  /** The client closed the channel: send these, then end. */
  | { readonly kind: 'close'; readonly packets: readonly Buffer[] }
  /** The client answered our close: end now. */
  | { readonly kind: 'closed' }
  | { readonly kind: 'violation'; readonly reason: string };

/** Server version we announce; clients ignore it. */
const SERVER_VERSION = 1;

export class TsguFlow {
  private current: Stage = 'handshake';
  private tunnelId = 0;

  get stage(): Stage {
    return this.current;
  }

  /** One packet from the client. */
  receive(p: TsguPacket): Step {
    const stage = this.current;
    switch (p.type) {
      case 'handshake-request': {
        if (stage !== 'handshake') return this.violation(`handshake in stage ${stage}`);
        if (p.versionMajor !== 1) return this.refuseAndEnd(HResult.E_PROXY_CAPABILITYMISMATCH);
        if (!(p.extendedAuth & ExtendedAuth.PAA)) return this.refuseAndEnd(HResult.E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD);
        this.current = 'tunnel-create';
        return answer(encodePacket({ type: 'handshake-response', errorCode: HResult.ERROR_SUCCESS, versionMajor: 1, versionMinor: 0, serverVersion: 0, extendedAuth: ExtendedAuth.PAA }));
      }
      case 'tunnel-create': {
        if (stage !== 'tunnel-create') return this.violation(`tunnel create in stage ${stage}`);
        const cookie = p.paaCookie ? cookieText(p.paaCookie) : undefined;
        return { kind: 'tunnel', cookie };
      }
      case 'tunnel-auth': {
        if (stage !== 'tunnel-auth') return this.violation(`tunnel authorize in stage ${stage}`);
        this.current = 'channel-create';
        return answer(encodePacket({ type: 'tunnel-auth-response', errorCode: HResult.ERROR_SUCCESS, redirFlags: RedirFlag.ENABLE_ALL, idleTimeout: 0 }));
      }
      case 'channel-create': {
        if (stage !== 'channel-create') return this.violation(`channel create in stage ${stage}`);
        if (p.protocol !== CHANNEL_PROTOCOL_RDP) return this.refuseAndEnd(HResult.E_PROXY_RAP_ACCESSDENIED);
        const resource = p.resources[0] ?? '';
        this.current = 'opening';
        return { kind: 'channel', resource, port: p.port };
      }
      case 'data':
        if (stage !== 'open') return this.violation(`data in stage ${stage}`);
        return { kind: 'data', data: p.data };
      case 'keepalive':
        // Either side may send one at any time after the handshake; nothing to answer.
        if (stage === 'handshake') return this.violation('keep-alive before the handshake');
        return answer();
      case 'close-channel':
        if (stage !== 'open' && stage !== 'closing') return this.violation(`close in stage ${stage}`);
        this.current = 'closed';
        return { kind: 'close', packets: [encodePacket({ type: 'close-channel-response', statusCode: HResult.ERROR_SUCCESS })] };
      case 'close-channel-response':
        if (stage !== 'closing') return this.violation(`close response in stage ${stage}`);
        this.current = 'closed';
        return { kind: 'closed' };
      default:
        return this.violation(`unexpected ${p.type === 'unknown' ? `packet type ${p.packetType}` : p.type}`);
    }
  }

  /** The cookie was accepted: the tunnel response. */
  tunnelAccepted(): Buffer {
    if (this.current !== 'tunnel-create') throw new Error(`tunnelAccepted in stage ${this.current}`);
    this.current = 'tunnel-auth';
    this.tunnelId = 1;
    return encodePacket({
      type: 'tunnel-response',
      serverVersion: SERVER_VERSION,
      statusCode: HResult.ERROR_SUCCESS,
      tunnelId: this.tunnelId,
      // No statement of health, no consent message, no reauthentication: just what the client may send.
      capabilities: Capability.MESSAGING_SERVICE_MSG,
    });
  }

  /** The console answered: the channel response; data flows from here. */
  channelOpened(channelId: number): Buffer {
    if (this.current !== 'opening') throw new Error(`channelOpened in stage ${this.current}`);
    this.current = 'open';
    return encodePacket({ type: 'channel-response', errorCode: HResult.ERROR_SUCCESS, channelId });
  }

  /**
   * The answer that says no to the packet being answered now (its own response type, with `hr`),
   * or, once the channel is open, a close-channel packet. The flow is over after it.
   */
  refusal(hr: number): Buffer {
    const stage = this.current;
    this.current = stage === 'open' ? 'closing' : 'closed';
    switch (stage) {
      case 'handshake':
        return encodePacket({ type: 'handshake-response', errorCode: hr, versionMajor: 1, versionMinor: 0, serverVersion: 0, extendedAuth: ExtendedAuth.PAA });
      case 'tunnel-create':
        return encodePacket({ type: 'tunnel-response', serverVersion: SERVER_VERSION, statusCode: hr });
      case 'tunnel-auth':
        return encodePacket({ type: 'tunnel-auth-response', errorCode: hr });
      case 'channel-create':
      case 'opening':
        return encodePacket({ type: 'channel-response', errorCode: hr });
      case 'open':
      case 'closing':
      case 'closed':
        return encodePacket({ type: 'close-channel', statusCode: hr });
    }
  }

  private refuseAndEnd(hr: number): Step {
    return { kind: 'close', packets: [this.refusal(hr)] };
  }

  private violation(reason: string): Step {
    this.current = 'closed';
    return { kind: 'violation', reason };
  }
}

function answer(...packets: Buffer[]): Step {
  return { kind: 'answer', packets };
}

/**
 * The PAA cookie as text: UTF-16LE with a NUL, as FreeRDP and mstsc send it; a cookie whose bytes
 * are plain ASCII (other clients) is read as such. Non-printable text is no ticket: undefined.
 */
export function cookieText(b: Uint8Array): string | undefined {
  const asUtf16 = utf16z(b);
  const candidates = [asUtf16, Buffer.from(b).toString('latin1').replace(/\0+$/, '')];
  return candidates.find((s): s is string => s !== null && s.length > 0 && s.length <= 256 && /^[\x21-\x7e]+$/.test(s));
}
