/**
 * RD Gateway, HTTP transport (MS-TSGU "RDGHTTP"): the packets a gateway and its client exchange
 * (2.2.10, constants 2.2.5.3, return codes 2.2.6), a bounded streaming reader that splits a byte
 * stream into them, and the `RDG_OUT_DATA` / `RDG_IN_DATA` requests that open the channels
 * (2.2.3), which Node's HTTP parser refuses because of their methods.
 *
 * A packet is an 8-byte HTTP_PACKET_HEADER (type, reserved, packetLength counting the header) and
 * a body; all integers are little-endian. Strings (HTTP_UNICODE_STRING) are a byte count and
 * UTF-16LE text; FreeRDP 2.11 counts the terminating NUL, so decoding drops trailing NULs and
 * encoding adds one. Byte fields (the PAA cookie, statements of health, DATA payloads) are views
 * into the decoded input: copy them if the input buffer will be reused.
 *
 * What FreeRDP 2.11.7 sends (captured, test/fixtures/rdp-packets.ts): handshake 1.0 with
 * ExtendedAuth PAA; tunnel create with caps 0x0d and the `/gat:` token as a UTF-16LE PAA cookie;
 * tunnel auth with the client's host name; channel create with one resource (the `/v:` name), port
 * 3389, protocol 3; then DATA packets of at most 65535 bytes of RDP each.
 *
 * Checked against xfreerdp 2.11.7 with a loopback mock gateway built from this module alone: it
 * takes the 101 computed by websocketAccept() and every answer encodePacket() writes, sends its
 * RDP bytes, and answers CLOSE_CHANNEL. It stops on E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED in
 * the tunnel response and on E_PROXY_RAP_ACCESSDENIED in the channel response. But it tests
 * FAILED(hr), the top bit, so the spec's HRESULT_CODE(...) forms read as success: after a channel
 * response of E_PROXY_TS_CONNECTFAILED (0x59DD) it went on sending data. Refuse with a full
 * HRESULT (E_PROXY_RAP_ACCESSDENIED, E_PROXY_INTERNALERROR, ...).
 */
import { createHash } from 'node:crypto';
import { type Detection, type Detector, MORE, NO, match, prefixState } from './detector.js';
import {
  type Parse, MORE_BYTES, checkUint, failure, indexOfCrlf, done, toUtf16z, u16le, u32le, u64le, u8, utf16z,
} from './parse.js';

/** HTTP_PACKET_TYPE (2.2.5.3.3). */
export const PacketType = {
  HANDSHAKE_REQUEST: 0x01,
  HANDSHAKE_RESPONSE: 0x02,
  EXTENDED_AUTH_MSG: 0x03,
  TUNNEL_CREATE: 0x04,
  TUNNEL_RESPONSE: 0x05,
  TUNNEL_AUTH: 0x06,
  TUNNEL_AUTH_RESPONSE: 0x07,
  CHANNEL_CREATE: 0x08,
  CHANNEL_RESPONSE: 0x09,
  DATA: 0x0a,
  SERVICE_MESSAGE: 0x0b,
  REAUTH_MESSAGE: 0x0c,
  KEEPALIVE: 0x0d,
  CLOSE_CHANNEL: 0x10,
  CLOSE_CHANNEL_RESPONSE: 0x11,
} as const;

/** HTTP_EXTENDED_AUTH (2.2.5.3.2), in the handshake. PAA is how a console ticket travels. */
export const ExtendedAuth = {
  NONE: 0x00,
  SC: 0x01,
  PAA: 0x02,
  SSPI_NTLM: 0x04,
} as const;

/** HTTP_CAPABILITY_TYPE (2.2.5.3.9), the tunnel's capsFlags. */
export const Capability = {
  QUAR_SOH: 0x01,
  IDLE_TIMEOUT: 0x02,
  MESSAGING_CONSENT_SIGN: 0x04,
  MESSAGING_SERVICE_MSG: 0x08,
  REAUTH: 0x10,
  UDP_TRANSPORT: 0x20,
} as const;

/** fieldsPresent of HTTP_TUNNEL_PACKET (2.2.5.3.6). */
export const TunnelPacketField = { PAA_COOKIE: 0x1, REAUTH: 0x2 } as const;
/** fieldsPresent of HTTP_TUNNEL_RESPONSE (2.2.5.3.8). */
export const TunnelResponseField = { TUNNEL_ID: 0x01, CAPS: 0x02, SOH_REQ: 0x04, CONSENT_MSG: 0x10 } as const;
/** fieldsPresent of HTTP_TUNNEL_AUTH_PACKET (2.2.5.3.4). */
export const TunnelAuthField = { SOH: 0x1 } as const;
/** fieldsPresent of HTTP_TUNNEL_AUTH_RESPONSE (2.2.5.3.5). */
export const TunnelAuthResponseField = { REDIR_FLAGS: 0x1, IDLE_TIMEOUT: 0x2, SOH_RESPONSE: 0x4 } as const;
/** fieldsPresent of HTTP_CHANNEL_RESPONSE (2.2.5.3.1); on the wire the order is id, port, cookie. */
export const ChannelResponseField = { CHANNELID: 0x1, AUTHNCOOKIE: 0x2, UDPPORT: 0x4 } as const;

/** HTTP_TUNNEL_REDIR_FLAGS (2.2.5.3.7): device redirection the gateway allows. */
export const RedirFlag = {
  ENABLE_ALL: 0x80000000,
  DISABLE_ALL: 0x40000000,
  DISABLE_DRIVE: 0x01,
  DISABLE_PRINTER: 0x02,
  DISABLE_PORT: 0x04,
  DISABLE_CLIPBOARD: 0x08,
  DISABLE_PNP: 0x10,
} as const;

/**
 * Return codes (2.2.6.1), in HRESULT format. Values below 0x10000 are the spec's
 * HRESULT_CODE(E_PROXY_...) forms (E_PROXY_INTERNALERROR_CODE is the short form of
 * E_PROXY_INTERNALERROR); see the module comment before sending one of those to FreeRDP.
 */
export const HResult = {
  ERROR_SUCCESS: 0x00000000,
  ERROR_ACCESS_DENIED: 0x00000005,
  ERROR_BAD_ARGUMENTS: 0x000000a0,
  ERROR_GRACEFUL_DISCONNECT: 0x000004ca,
  E_PROXY_CONNECTIONABORTED: 0x000004d4,
  E_PROXY_INTERNALERROR: 0x800759d8,
  E_PROXY_RAP_ACCESSDENIED: 0x800759da,
  E_PROXY_NAP_ACCESSDENIED: 0x800759db,
  E_PROXY_ALREADYDISCONNECTED: 0x800759df,
  E_PROXY_CAPABILITYMISMATCH: 0x800759e9,
  E_PROXY_QUARANTINE_ACCESSDENIED: 0x800759ed,
  E_PROXY_NOCERTAVAILABLE: 0x800759ee,
  E_PROXY_COOKIE_BADPACKET: 0x800759f7,
  E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED: 0x800759f8,
  E_PROXY_UNSUPPORTED_AUTHENTICATION_METHOD: 0x800759f9,
  SEC_E_LOGON_DENIED: 0x8009030c,
  E_PROXY_INTERNALERROR_CODE: 0x000059d8,
  E_PROXY_TS_CONNECTFAILED: 0x000059dd,
  /** The full HRESULT of E_PROXY_TS_CONNECTFAILED (FreeRDP's tsg.h): the form a refusal must use. */
  E_PROXY_TS_CONNECTFAILED_HRESULT: 0x800759dd,
  E_PROXY_MAXCONNECTIONSREACHED: 0x000059e6,
  E_PROXY_NOTSUPPORTED: 0x000059e8,
  E_PROXY_SESSIONTIMEOUT: 0x000059f6,
  E_PROXY_REAUTH_AUTHN_FAILED: 0x000059fa,
  E_PROXY_REAUTH_CAP_FAILED: 0x000059fb,
  E_PROXY_REAUTH_RAP_FAILED: 0x000059fc,
  E_PROXY_SDR_NOT_SUPPORTED_BY_TS: 0x000059fd,
  E_PROXY_REAUTH_NAP_FAILED: 0x00005a00,
} as const;

/** Does a peer that tests FAILED(hr), as FreeRDP does, read this code as a failure? */
export function isFailure(hr: number): boolean {
  return (hr & 0x80000000) !== 0;
}

export const PACKET_HEADER_LENGTH = 8;
/** The largest DATA packet: header, cbDataLen, 65535 bytes. FreeRDP 2.11 never sends more. */
export const DEFAULT_MAX_PACKET_BYTES = PACKET_HEADER_LENGTH + 2 + 0xffff;
/** HTTP_CHANNEL_PACKET: 1..50 resource names, 0..3 alternatives, protocol 3. */
export const MAX_RESOURCES = 50;
export const MAX_ALT_RESOURCES = 3;
export const CHANNEL_PROTOCOL_RDP = 3;

// ---------------------------------------------------------------------------------------------
// Packets

export type TsguPacket =
  | { readonly type: 'handshake-request'; readonly versionMajor: number; readonly versionMinor: number; readonly clientVersion: number; readonly extendedAuth: number }
  | { readonly type: 'handshake-response'; readonly errorCode: number; readonly versionMajor: number; readonly versionMinor: number; readonly serverVersion: number; readonly extendedAuth: number }
  | { readonly type: 'extended-auth'; readonly errorCode: number; readonly blob: Uint8Array }
  | {
    readonly type: 'tunnel-create';
    readonly capabilities: number;
    readonly reauthTunnelContext?: bigint;
    /** HTTP_byte_BLOB; FreeRDP puts the `/gat:` token there as UTF-16LE with a NUL (see utf16z). */
    readonly paaCookie?: Uint8Array;
  }
  | {
    readonly type: 'tunnel-response';
    readonly serverVersion: number;
    readonly statusCode: number;
    readonly tunnelId?: number;
    readonly capabilities?: number;
    readonly sohRequest?: { readonly nonce: Uint8Array; readonly serverCert: string };
    readonly consentMessage?: string;
  }
  | { readonly type: 'tunnel-auth'; readonly clientName: string; readonly statementOfHealth?: Uint8Array }
  | {
    readonly type: 'tunnel-auth-response';
    readonly errorCode: number;
    readonly redirFlags?: number;
    /** Minutes. */
    readonly idleTimeout?: number;
    readonly sohResponse?: Uint8Array;
  }
  | {
    readonly type: 'channel-create';
    /** Names of the target: for oneport, a VM name, never an address to dial. */
    readonly resources: readonly string[];
    readonly altResources: readonly string[];
    readonly port: number;
    readonly protocol: number;
  }
  | { readonly type: 'channel-response'; readonly errorCode: number; readonly channelId?: number; readonly udpPort?: number; readonly authnCookie?: Uint8Array }
  | { readonly type: 'data'; readonly data: Uint8Array }
  | { readonly type: 'service-message'; readonly message: string }
  | { readonly type: 'reauth'; readonly reauthTunnelContext: bigint }
  | { readonly type: 'keepalive' }
  | { readonly type: 'close-channel'; readonly statusCode: number }
  | { readonly type: 'close-channel-response'; readonly statusCode: number }
  /** A type this module does not know; FreeRDP logs and ignores those, so may a gateway. */
  | { readonly type: 'unknown'; readonly packetType: number; readonly body: Uint8Array };

export type TsguError =
  | 'bad-packet-length'
  | 'packet-too-large'
  | 'truncated'
  | 'bad-string'
  | 'bad-resource-count';

/**
 * Framing only: the length of the packet at the start of `b`. Refuses a length below the header
 * or above `maxPacketBytes` as soon as the header is in, before waiting for any body.
 */
export function framePacket(b: Uint8Array, maxPacketBytes = DEFAULT_MAX_PACKET_BYTES): Parse<number, TsguError> {
  if (b.length < PACKET_HEADER_LENGTH) return MORE_BYTES;
  const length = u32le(b, 4);
  if (length < PACKET_HEADER_LENGTH) return failure('bad-packet-length');
  if (length > maxPacketBytes) return failure('packet-too-large');
  if (b.length < length) return MORE_BYTES;
  return done(length, length);
}

/** A bounds-checked reader over one packet body; the first failure sticks and reads return 0. */
class Body {
  error: TsguError | null = null;
  constructor(private readonly b: Uint8Array, private at: number, private readonly end: number) {}
  get left(): number {
    return this.end - this.at;
  }
  private take(n: number): number {
    if (this.error || this.left < n) {
      this.error ??= 'truncated';
      return -1;
    }
    const at = this.at;
    this.at += n;
    return at;
  }
  u8(): number {
    const at = this.take(1);
    return at < 0 ? 0 : u8(this.b, at);
  }
  u16(): number {
    const at = this.take(2);
    return at < 0 ? 0 : u16le(this.b, at);
  }
  u32(): number {
    const at = this.take(4);
    return at < 0 ? 0 : u32le(this.b, at);
  }
  u64(): bigint {
    const at = this.take(8);
    return at < 0 ? 0n : u64le(this.b, at);
  }
  bytes(n: number): Uint8Array {
    const at = this.take(n);
    return at < 0 ? new Uint8Array(0) : this.b.subarray(at, at + n);
  }
  /** HTTP_byte_BLOB: cbLen, then that many bytes. */
  blob(): Uint8Array {
    return this.bytes(this.u16());
  }
  /** HTTP_UNICODE_STRING: cbLen, then UTF-16LE. */
  text(): string {
    const s = utf16z(this.blob());
    if (s === null) this.error ??= 'bad-string';
    return s ?? '';
  }
}

/**
 * Decode the packet at the start of `b` (what follows it is left alone). Junk gives a code, never
 * a throw; bytes inside packetLength after the known fields are ignored, as FreeRDP does.
 */
export function decodePacket(b: Uint8Array, maxPacketBytes = DEFAULT_MAX_PACKET_BYTES): Parse<TsguPacket, TsguError> {
  const f = framePacket(b, maxPacketBytes);
  if (f.kind !== 'done') return f;
  const r = new Body(b, PACKET_HEADER_LENGTH, f.value);
  const packet = decodeBody(u16le(b, 0), r);
  return r.error ? failure(r.error) : done(packet, f.value);
}

function decodeBody(type: number, r: Body): TsguPacket {
  switch (type) {
    case PacketType.HANDSHAKE_REQUEST:
      return { type: 'handshake-request', versionMajor: r.u8(), versionMinor: r.u8(), clientVersion: r.u16(), extendedAuth: r.u16() };
    case PacketType.HANDSHAKE_RESPONSE:
      return { type: 'handshake-response', errorCode: r.u32(), versionMajor: r.u8(), versionMinor: r.u8(), serverVersion: r.u16(), extendedAuth: r.u16() };
    case PacketType.EXTENDED_AUTH_MSG:
      return { type: 'extended-auth', errorCode: r.u32(), blob: r.blob() };
    case PacketType.TUNNEL_CREATE: {
      const capabilities = r.u32();
      const fields = r.u16();
      r.u16(); // reserved
      const reauthTunnelContext = fields & TunnelPacketField.REAUTH ? r.u64() : undefined;
      const paaCookie = fields & TunnelPacketField.PAA_COOKIE ? r.blob() : undefined;
      return { type: 'tunnel-create', capabilities, ...(reauthTunnelContext !== undefined && { reauthTunnelContext }), ...(paaCookie && { paaCookie }) };
    }
    case PacketType.TUNNEL_RESPONSE: {
      const serverVersion = r.u16();
      const statusCode = r.u32();
      const fields = r.u16();
      r.u16(); // reserved
      const tunnelId = fields & TunnelResponseField.TUNNEL_ID ? r.u32() : undefined;
      const capabilities = fields & TunnelResponseField.CAPS ? r.u32() : undefined;
      const sohRequest = fields & TunnelResponseField.SOH_REQ ? { nonce: r.bytes(16), serverCert: r.text() } : undefined;
      const consentMessage = fields & TunnelResponseField.CONSENT_MSG ? r.text() : undefined;
      return {
        type: 'tunnel-response', serverVersion, statusCode,
        ...(tunnelId !== undefined && { tunnelId }),
        ...(capabilities !== undefined && { capabilities }),
        ...(sohRequest && { sohRequest }),
        ...(consentMessage !== undefined && { consentMessage }),
      };
    }
    case PacketType.TUNNEL_AUTH: {
      const fields = r.u16();
      const clientName = r.text();
      const statementOfHealth = fields & TunnelAuthField.SOH ? r.blob() : undefined;
      return { type: 'tunnel-auth', clientName, ...(statementOfHealth && { statementOfHealth }) };
    }
    case PacketType.TUNNEL_AUTH_RESPONSE: {
      const errorCode = r.u32();
      const fields = r.u16();
      r.u16(); // reserved
      const redirFlags = fields & TunnelAuthResponseField.REDIR_FLAGS ? r.u32() : undefined;
      const idleTimeout = fields & TunnelAuthResponseField.IDLE_TIMEOUT ? r.u32() : undefined;
      const sohResponse = fields & TunnelAuthResponseField.SOH_RESPONSE ? r.blob() : undefined;
      return {
        type: 'tunnel-auth-response', errorCode,
        ...(redirFlags !== undefined && { redirFlags }),
        ...(idleTimeout !== undefined && { idleTimeout }),
        ...(sohResponse && { sohResponse }),
      };
    }
    case PacketType.CHANNEL_CREATE: {
      const numResources = r.u8();
      const numAlt = r.u8();
      const port = r.u16();
      const protocol = r.u16();
      if (!r.error && (numResources < 1 || numResources > MAX_RESOURCES || numAlt > MAX_ALT_RESOURCES)) r.error = 'bad-resource-count';
      const resources: string[] = [];
      const altResources: string[] = [];
      for (let i = 0; i < numResources && !r.error; i++) resources.push(r.text());
      for (let i = 0; i < numAlt && !r.error; i++) altResources.push(r.text());
      return { type: 'channel-create', resources, altResources, port, protocol };
    }
    case PacketType.CHANNEL_RESPONSE: {
      const errorCode = r.u32();
      const fields = r.u16();
      r.u16(); // reserved
      const channelId = fields & ChannelResponseField.CHANNELID ? r.u32() : undefined;
      const udpPort = fields & ChannelResponseField.UDPPORT ? r.u16() : undefined;
      const authnCookie = fields & ChannelResponseField.AUTHNCOOKIE ? r.blob() : undefined;
      return {
        type: 'channel-response', errorCode,
        ...(channelId !== undefined && { channelId }),
        ...(udpPort !== undefined && { udpPort }),
        ...(authnCookie && { authnCookie }),
      };
    }
    case PacketType.DATA:
      return { type: 'data', data: r.blob() };
    case PacketType.SERVICE_MESSAGE:
      return { type: 'service-message', message: r.text() };
    case PacketType.REAUTH_MESSAGE:
      return { type: 'reauth', reauthTunnelContext: r.u64() };
    case PacketType.KEEPALIVE:
      return { type: 'keepalive' };
    case PacketType.CLOSE_CHANNEL:
      return { type: 'close-channel', statusCode: r.u32() };
    case PacketType.CLOSE_CHANNEL_RESPONSE:
      return { type: 'close-channel-response', statusCode: r.u32() };
    default:
      return { type: 'unknown', packetType: type, body: r.bytes(r.left) };
  }
}

/** Writes a body; checks every value against its field width (an encoder's input is ours). */
class Out {
  private readonly parts: Buffer[] = [];
  u8(name: string, v: number): this {
    checkUint(name, v, 8);
    this.parts.push(Buffer.of(v));
    return this;
  }
  u16(name: string, v: number): this {
    checkUint(name, v, 16);
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v);
    this.parts.push(b);
    return this;
  }
  u32(name: string, v: number): this {
    checkUint(name, v, 32);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.parts.push(b);
    return this;
  }
  u64(name: string, v: bigint): this {
    if (v < 0n || v >= 2n ** 64n) throw new RangeError(`${name} must be an unsigned 64-bit integer`);
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    this.parts.push(b);
    return this;
  }
  raw(name: string, v: Uint8Array, length?: number): this {
    if (length !== undefined && v.length !== length) throw new RangeError(`${name} must be ${length} bytes`);
    this.parts.push(Buffer.from(v));
    return this;
  }
  blob(name: string, v: Uint8Array): this {
    return this.u16(`${name} length`, v.length).raw(name, v);
  }
  text(name: string, v: string): this {
    return this.blob(name, toUtf16z(v));
  }
  packet(type: number): Buffer {
    const body = Buffer.concat(this.parts);
    const out = Buffer.alloc(PACKET_HEADER_LENGTH + body.length);
    out.writeUInt16LE(type, 0);
    out.writeUInt32LE(out.length, 4);
    body.copy(out, PACKET_HEADER_LENGTH);
    return out;
  }
}

const bit = (present: boolean, flag: number): number => (present ? flag : 0);

/** The bytes of a packet; fieldsPresent follows from which optional fields are set. */
export function encodePacket(p: TsguPacket): Buffer {
  const o = new Out();
  switch (p.type) {
    case 'handshake-request':
      return o.u8('versionMajor', p.versionMajor).u8('versionMinor', p.versionMinor).u16('clientVersion', p.clientVersion)
        .u16('extendedAuth', p.extendedAuth).packet(PacketType.HANDSHAKE_REQUEST);
    case 'handshake-response':
      return o.u32('errorCode', p.errorCode).u8('versionMajor', p.versionMajor).u8('versionMinor', p.versionMinor)
        .u16('serverVersion', p.serverVersion).u16('extendedAuth', p.extendedAuth).packet(PacketType.HANDSHAKE_RESPONSE);
    case 'extended-auth':
      return o.u32('errorCode', p.errorCode).blob('blob', p.blob).packet(PacketType.EXTENDED_AUTH_MSG);
    case 'tunnel-create': {
      o.u32('capabilities', p.capabilities)
        .u16('fieldsPresent', bit(p.paaCookie !== undefined, TunnelPacketField.PAA_COOKIE) | bit(p.reauthTunnelContext !== undefined, TunnelPacketField.REAUTH))
        .u16('reserved', 0);
      if (p.reauthTunnelContext !== undefined) o.u64('reauthTunnelContext', p.reauthTunnelContext);
      if (p.paaCookie !== undefined) o.blob('paaCookie', p.paaCookie);
      return o.packet(PacketType.TUNNEL_CREATE);
    }
    case 'tunnel-response': {
      o.u16('serverVersion', p.serverVersion).u32('statusCode', p.statusCode).u16(
        'fieldsPresent',
        bit(p.tunnelId !== undefined, TunnelResponseField.TUNNEL_ID) |
          bit(p.capabilities !== undefined, TunnelResponseField.CAPS) |
          bit(p.sohRequest !== undefined, TunnelResponseField.SOH_REQ) |
          bit(p.consentMessage !== undefined, TunnelResponseField.CONSENT_MSG),
      ).u16('reserved', 0);
      if (p.tunnelId !== undefined) o.u32('tunnelId', p.tunnelId);
      if (p.capabilities !== undefined) o.u32('capabilities', p.capabilities);
      if (p.sohRequest !== undefined) o.raw('nonce', p.sohRequest.nonce, 16).text('serverCert', p.sohRequest.serverCert);
      if (p.consentMessage !== undefined) o.text('consentMessage', p.consentMessage);
      return o.packet(PacketType.TUNNEL_RESPONSE);
    }
    case 'tunnel-auth': {
      o.u16('fieldsPresent', bit(p.statementOfHealth !== undefined, TunnelAuthField.SOH)).text('clientName', p.clientName);
      if (p.statementOfHealth !== undefined) o.blob('statementOfHealth', p.statementOfHealth);
      return o.packet(PacketType.TUNNEL_AUTH);
    }
    case 'tunnel-auth-response': {
      o.u32('errorCode', p.errorCode).u16(
        'fieldsPresent',
        bit(p.redirFlags !== undefined, TunnelAuthResponseField.REDIR_FLAGS) |
          bit(p.idleTimeout !== undefined, TunnelAuthResponseField.IDLE_TIMEOUT) |
          bit(p.sohResponse !== undefined, TunnelAuthResponseField.SOH_RESPONSE),
      ).u16('reserved', 0);
      if (p.redirFlags !== undefined) o.u32('redirFlags', p.redirFlags);
      if (p.idleTimeout !== undefined) o.u32('idleTimeout', p.idleTimeout);
      if (p.sohResponse !== undefined) o.blob('sohResponse', p.sohResponse);
      return o.packet(PacketType.TUNNEL_AUTH_RESPONSE);
    }
    case 'channel-create': {
      if (p.resources.length < 1 || p.resources.length > MAX_RESOURCES || p.altResources.length > MAX_ALT_RESOURCES) {
        throw new RangeError(`a channel names 1..${MAX_RESOURCES} resources and 0..${MAX_ALT_RESOURCES} alternatives`);
      }
      o.u8('numResources', p.resources.length).u8('numAltResources', p.altResources.length).u16('port', p.port).u16('protocol', p.protocol);
      for (const name of [...p.resources, ...p.altResources]) o.text('resource', name);
      return o.packet(PacketType.CHANNEL_CREATE);
    }
    case 'channel-response': {
      o.u32('errorCode', p.errorCode).u16(
        'fieldsPresent',
        bit(p.channelId !== undefined, ChannelResponseField.CHANNELID) |
          bit(p.udpPort !== undefined, ChannelResponseField.UDPPORT) |
          bit(p.authnCookie !== undefined, ChannelResponseField.AUTHNCOOKIE),
      ).u16('reserved', 0);
      if (p.channelId !== undefined) o.u32('channelId', p.channelId);
      if (p.udpPort !== undefined) o.u16('udpPort', p.udpPort);
      if (p.authnCookie !== undefined) o.blob('authnCookie', p.authnCookie);
      return o.packet(PacketType.CHANNEL_RESPONSE);
    }
    case 'data':
      return o.blob('data', p.data).packet(PacketType.DATA);
    case 'service-message':
      return o.text('message', p.message).packet(PacketType.SERVICE_MESSAGE);
    case 'reauth':
      return o.u64('reauthTunnelContext', p.reauthTunnelContext).packet(PacketType.REAUTH_MESSAGE);
    case 'keepalive':
      return o.packet(PacketType.KEEPALIVE);
    case 'close-channel':
      return o.u32('statusCode', p.statusCode).packet(PacketType.CLOSE_CHANNEL);
    case 'close-channel-response':
      return o.u32('statusCode', p.statusCode).packet(PacketType.CLOSE_CHANNEL_RESPONSE);
    case 'unknown':
      checkUint('packetType', p.packetType, 16);
      return o.raw('body', p.body).packet(p.packetType);
  }
}

/**
 * RDP bytes as DATA packets: HTTP_DATA_PACKET's length field is 16 bits, so a larger write is
 * split into several packets.
 */
export function encodeData(data: Uint8Array): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += 0xffff) {
    // The hot path of every tunnel: the same bytes encodePacket writes, with one copy of the data.
    const part = data.subarray(at, at + 0xffff);
    const p = Buffer.allocUnsafe(PACKET_HEADER_LENGTH + 2 + part.length);
    p.writeUInt16LE(PacketType.DATA, 0);
    p.writeUInt16LE(0, 2);
    p.writeUInt32LE(p.length, 4);
    p.writeUInt16LE(part.length, 8);
    p.set(part, 10);
    out.push(p);
  }
  return out;
}

export type ReadResult =
  | { readonly kind: 'packet'; readonly packet: TsguPacket; readonly length: number }
  | { readonly kind: 'more' }
  | { readonly kind: 'error'; readonly code: TsguError };

/**
 * Splits a byte stream (a WebSocket's binary messages, or a chunked body's data) into packets.
 * push() what arrived, then call next() until it says 'more'. Nothing is buffered beyond one
 * packet of at most `maxPacketBytes`, and the length is checked as soon as the header is in. An
 * error sticks: after one malformed packet the stream cannot be trusted, so the tunnel ends.
 * Chunks are never written to; a packet that lies inside one chunk is a view of it.
 */
export class TsguPacketReader {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private failure: { readonly kind: 'error'; readonly code: TsguError } | null = null;

  constructor(readonly maxPacketBytes = DEFAULT_MAX_PACKET_BYTES) {
    checkUint('maxPacketBytes', maxPacketBytes, 32);
    if (maxPacketBytes < PACKET_HEADER_LENGTH) throw new RangeError(`maxPacketBytes is at least ${PACKET_HEADER_LENGTH}`);
  }

  /** Bytes held and not yet returned as packets. */
  get pending(): number {
    return this.buffered;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0 || this.failure) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  next(): ReadResult {
    if (this.failure) return this.failure;
    if (this.buffered < PACKET_HEADER_LENGTH) return MORE_BYTES;
    const f = framePacket(this.peek(PACKET_HEADER_LENGTH), this.maxPacketBytes);
    if (f.kind === 'error') return (this.failure = f);
    const length = u32le(this.peek(PACKET_HEADER_LENGTH), 4);
    if (this.buffered < length) return MORE_BYTES;
    const d = decodePacket(this.take(length), this.maxPacketBytes);
    if (d.kind === 'error') return (this.failure = d);
    if (d.kind === 'more') return (this.failure = failure('bad-packet-length')); // cannot happen: the packet is whole
    return { kind: 'packet', packet: d.value, length };
  }

  /** The first n buffered bytes (n <= buffered), copied only when they span chunks. */
  private peek(n: number): Uint8Array {
    const first = this.chunks[0];
    if (first && first.length >= n) return first.subarray(0, n);
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, n - at);
      out.set(c.subarray(0, k), at);
      at += k;
      if (at === n) break;
    }
    return out;
  }

  private take(n: number): Uint8Array {
    const out = this.peek(n);
    this.buffered -= n;
    let left = n;
    while (left > 0) {
      const c = this.chunks[0];
      if (!c) break;
      if (c.length <= left) {
        this.chunks.shift();
        left -= c.length;
      } else {
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// RDG_OUT_DATA / RDG_IN_DATA requests

export const RDG_OUT_DATA = 'RDG_OUT_DATA';
export const RDG_IN_DATA = 'RDG_IN_DATA';
export type RdgMethod = typeof RDG_OUT_DATA | typeof RDG_IN_DATA;

const METHOD_PREFIXES = [RDG_OUT_DATA, RDG_IN_DATA].map((m) => ({ method: m as RdgMethod, bytes: Buffer.from(`${m} `, 'latin1') }));

export interface RdgRequestInfo {
  readonly method: RdgMethod;
}

/**
 * Inside TLS, before Node's HTTP parser: does the request line start with an RD Gateway method?
 * Everything else ('no') goes to the HTTP server as usual.
 */
export const rdgRequestDetector = {
  name: 'rdg',
  detect(head: Uint8Array): Detection<RdgRequestInfo> {
    let more = false;
    for (const { method, bytes } of METHOD_PREFIXES) {
      const s = prefixState(head, bytes);
      if (s === 'match') return match({ method });
      if (s === 'more') more = true;
    }
    return more ? MORE : NO;
  },
} satisfies Detector<RdgRequestInfo>;

/** Request line and headers together; FreeRDP's are about 400 bytes. */
export const DEFAULT_MAX_HEAD_BYTES = 8192;
export const MAX_HEADER_COUNT = 64;
/** FreeRDP's key is 15 characters; RFC 6455's 24. Anything printable up to this length is taken. */
export const MAX_WEBSOCKET_KEY_LENGTH = 64;
/** RFC 6455 1.3. */
export const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export interface RdgRequestHead {
  readonly method: RdgMethod;
  /** The request-target as sent (origin form). */
  readonly target: string;
  readonly path: string;
  /** MS-TSGU 2.2.3.3 allows ConId, CorId, UsrId, AuthS, ClGen, ClBld here instead of headers. */
  readonly query: URLSearchParams;
  readonly version: '1.0' | '1.1';
  /** Every header in order, name as sent. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly host: string | null;
  /** RDG-Connection-Id, or the ConId query parameter: joins the legacy OUT and IN channels. */
  readonly connectionId: string | null;
  /** RDG-Correlation-Id or CorId. */
  readonly correlationId: string | null;
  /** RDG-User-Id or UsrId (base64 of the UTF-16 user name; for logs only). */
  readonly userId: string | null;
  /** RDG-Auth-Scheme or AuthS: FreeRDP sends PAA, the ticket then rides in the tunnel-create packet. */
  readonly authScheme: string | null;
  readonly authorization: string | null;
  /** Upgrade: websocket and a Connection header naming upgrade. */
  readonly websocket: boolean;
  /** Sec-WebSocket-Key exactly as sent (FreeRDP's is not base64): hash it as is. */
  readonly websocketKey: string | null;
  readonly websocketVersion: string | null;
  readonly contentLength: number | null;
  readonly chunked: boolean;
}

export type RdgHeadError =
  | 'not-rdg'
  | 'head-too-large'
  | 'bad-request-line'
  | 'bad-version'
  | 'bad-header'
  | 'too-many-headers'
  | 'duplicate-header'
  | 'bad-content-length'
  | 'unsupported-transfer-encoding'
  | 'content-length-and-chunked'
  | 'bad-websocket-key';

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const TARGET = /^\/[\x21-\x7e]*$/;
/** Headers whose repetition with different values would let two readers disagree. */
const SINGLE = new Set(['content-length', 'transfer-encoding', 'upgrade', 'sec-websocket-key', 'rdg-connection-id', 'rdg-auth-scheme', 'host', 'authorization']);

/**
 * Parse the head of an RDG_OUT_DATA / RDG_IN_DATA request at the start of `b`: 'done' once the
 * blank line is in (length = bytes up to and including it; the body, if any, follows), 'more'
 * before, 'error' as soon as the head cannot be one, including when no blank line comes within
 * `maxHeadBytes`. Lines end in CR LF; obsolete line folding is refused.
 */
export function parseRdgRequestHead(b: Uint8Array, maxHeadBytes = DEFAULT_MAX_HEAD_BYTES): Parse<RdgRequestHead, RdgHeadError> {
  const d = rdgRequestDetector.detect(b);
  if (d.kind === 'no') return failure('not-rdg');
  if (d.kind === 'more') return MORE_BYTES;
  const limit = Math.min(b.length, maxHeadBytes);
  let end = -1;
  for (let i = 0; i + 3 < limit; i++) {
    if (b[i] === 0x0d && b[i + 1] === 0x0a && b[i + 2] === 0x0d && b[i + 3] === 0x0a) {
      end = i;
      break;
    }
  }
  if (end < 0) return b.length >= maxHeadBytes ? failure('head-too-large') : MORE_BYTES;
  const text = Buffer.from(b.buffer, b.byteOffset, end).toString('latin1');
  const lines = text.split('\r\n');
  if (lines.some((l) => l.includes('\r') || l.includes('\n') || l.includes('\0'))) return failure('bad-header');

  const requestLine = /^(RDG_OUT_DATA|RDG_IN_DATA) (\S+) HTTP\/(\d)\.(\d)$/.exec(lines[0] ?? '');
  if (!requestLine) return failure('bad-request-line');
  const [, method, target, major, minor] = requestLine as unknown as [string, RdgMethod, string, string, string];
  if (!TARGET.test(target)) return failure('bad-request-line');
  if (major !== '1' || (minor !== '0' && minor !== '1')) return failure('bad-version');

  const headers: Array<readonly [string, string]> = [];
  const single = new Map<string, string>();
  for (const line of lines.slice(1)) {
    if (headers.length >= MAX_HEADER_COUNT) return failure('too-many-headers');
    const colon = line.indexOf(':');
    if (colon <= 0) return failure('bad-header');
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (!TOKEN.test(name) || !FIELD_VALUE.test(value)) return failure('bad-header');
    const key = name.toLowerCase();
    if (SINGLE.has(key)) {
      const seen = single.get(key);
      if (seen !== undefined && seen !== value) return failure('duplicate-header');
      single.set(key, value);
    }
    headers.push([name, value]);
  }
  const get = (name: string): string | null => single.get(name) ?? headers.find(([n]) => n.toLowerCase() === name)?.[1] ?? null;
  const all = (name: string): string[] => headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);

  let contentLength: number | null = null;
  const cl = get('content-length');
  if (cl !== null) {
    if (!/^\d{1,15}$/.test(cl)) return failure('bad-content-length');
    contentLength = Number(cl);
  }
  let chunked = false;
  const te = get('transfer-encoding');
  if (te !== null) {
    if (te.toLowerCase() !== 'chunked') return failure('unsupported-transfer-encoding');
    chunked = true;
  }
  // RFC 9112 6.3: both at once is how request smuggling starts; refuse rather than pick one.
  if (chunked && contentLength !== null) return failure('content-length-and-chunked');

  const connectionTokens = all('connection').flatMap((v) => v.split(',')).map((s) => s.trim().toLowerCase());
  const websocket = (get('upgrade') ?? '').toLowerCase() === 'websocket' && connectionTokens.includes('upgrade');
  const websocketKey = get('sec-websocket-key');
  if (websocketKey !== null && !/^[\x21-\x7e]+$/.test(websocketKey)) return failure('bad-websocket-key');
  if (websocketKey !== null && websocketKey.length > MAX_WEBSOCKET_KEY_LENGTH) return failure('bad-websocket-key');

  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : target.slice(q + 1));
  return done(
    {
      method,
      target,
      path,
      query,
      version: minor === '0' ? '1.0' : '1.1',
      headers,
      host: get('host'),
      connectionId: get('rdg-connection-id') ?? query.get('ConId'),
      correlationId: get('rdg-correlation-id') ?? query.get('CorId'),
      userId: get('rdg-user-id') ?? query.get('UsrId'),
      authScheme: get('rdg-auth-scheme') ?? query.get('AuthS'),
      authorization: get('authorization'),
      websocket,
      websocketKey,
      websocketVersion: get('sec-websocket-version'),
      contentLength,
      chunked,
    },
    end + 4,
  );
}

/** Sec-WebSocket-Accept (RFC 6455 4.2.2) over the key exactly as the client sent it. */
export function websocketAccept(key: string): string {
  return createHash('sha1').update(key + WEBSOCKET_GUID, 'latin1').digest('base64');
}

// ---------------------------------------------------------------------------------------------
// The legacy IN channel's body: HTTP/1.1 chunked transfer coding (RFC 9112 7.1)

export interface Chunk {
  /** The chunk's data, a view into the input; empty for the last chunk. */
  readonly data: Uint8Array;
  readonly last: boolean;
}

export type ChunkError = 'bad-chunk-size' | 'chunk-too-large' | 'bad-chunk-end' | 'trailers-too-large';

/** FreeRDP sends one TSGU packet per chunk, so a chunk is never larger than a packet. */
export const DEFAULT_MAX_CHUNK_BYTES = DEFAULT_MAX_PACKET_BYTES;
const MAX_CHUNK_LINE = 1024;

/**
 * One chunk at the start of `b`: size in hex (extensions ignored), CR LF, data, CR LF; or the last
 * chunk, `0`, then trailer lines up to a blank line. Sizes above `maxChunkBytes` are refused
 * before any data is awaited.
 */
export function parseChunk(b: Uint8Array, maxChunkBytes = DEFAULT_MAX_CHUNK_BYTES): Parse<Chunk, ChunkError> {
  const lineEnd = indexOfCrlf(b, 0, Math.min(b.length, MAX_CHUNK_LINE));
  if (lineEnd < 0) {
    if (b.length >= MAX_CHUNK_LINE) return failure('bad-chunk-size');
    // Refuse a size that is not hex, or already too large, before its line ends.
    let digits = 0;
    while (digits < b.length && isHex(u8(b, digits))) digits++;
    if (digits > 8) return failure('bad-chunk-size');
    if (digits > 0 && parseInt(Buffer.from(b.buffer, b.byteOffset, digits).toString('latin1'), 16) > maxChunkBytes) {
      return failure('chunk-too-large');
    }
    if (digits < b.length && (digits === 0 || !';\t \r'.includes(String.fromCharCode(u8(b, digits))))) return failure('bad-chunk-size');
    return MORE_BYTES;
  }
  const line = Buffer.from(b.buffer, b.byteOffset, lineEnd).toString('latin1');
  const m = /^([0-9A-Fa-f]{1,8})[\t ]*(;.*)?$/.exec(line);
  if (!m) return failure('bad-chunk-size');
  const size = parseInt(m[1] ?? '', 16);
  if (size > maxChunkBytes) return failure('chunk-too-large');
  const start = lineEnd + 2;
  if (size === 0) {
    // Trailers: lines until an empty one.
    let at = start;
    for (;;) {
      const e = indexOfCrlf(b, at, Math.min(b.length, start + MAX_CHUNK_LINE));
      if (e < 0) return b.length - start >= MAX_CHUNK_LINE ? failure('trailers-too-large') : MORE_BYTES;
      if (e === at) return done({ data: b.subarray(start, start), last: true }, e + 2);
      at = e + 2;
    }
  }
  if (b.length < start + size + 2) {
    if (b.length > start + size && b[start + size] !== 0x0d) return failure('bad-chunk-end');
    return MORE_BYTES;
  }
  if (b[start + size] !== 0x0d || b[start + size + 1] !== 0x0a) return failure('bad-chunk-end');
  return done({ data: b.subarray(start, start + size), last: false }, start + size + 2);
}

function isHex(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
}
