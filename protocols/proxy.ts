/**
 * PROXY protocol header detector and parser, versions 1 and 2 (HAProxy's "The PROXY protocol"
 * specification, sections 2.1 and 2.2).
 *
 * The header is the only thing the listener consumes from a connection: once it matched and came
 * from a trusted address, `headerLength` bytes are dropped and detection continues on what
 * follows, with the client's real address.
 *
 * A v2 header may carry TLVs after the addresses (spec 2.2.7: cloud balancers add their own, e.g.
 * AWS 0xEA VPC endpoint id, GCP 0xE0 PSC connection id, Azure 0xEE link id, plus SSL details), up
 * to the 16-bit length field: 16 + 65535 bytes. We accept headers up to a configured bound
 * (createProxyDetector) and skip the TLVs; the answer is still three-way: a header announcing more
 * than the bound is "no" as soon as its length field is in, one still arriving is "more".
 */
import { isIPv4, isIPv6 } from 'node:net';
import { type Detection, type Detector, MORE, NO, match, prefixState } from './detector.js';

export interface ProxyInfo {
  readonly version: 1 | 2;
  /** Bytes the header occupies at the start of the stream. */
  readonly headerLength: number;
  /** The original client, or undefined for LOCAL / UNKNOWN (health checks from the balancer). */
  readonly source?: { readonly address: string; readonly port: number };
}

/** Spec 2.1: a v1 header is at most 107 bytes including CRLF. */
export const V1_MAX = 107;
/** Spec 2.2: the length after the 16-byte fixed part is 16 bits; no v2 header is longer than this. */
export const V2_HARD_MAX = 16 + 0xffff;
/** Default bound on a whole v2 header (fixed part, addresses, TLVs): room for cloud balancers' TLVs. */
export const V2_DEFAULT_MAX = 4096;
/** Spec 2.2: the largest address block (AF_UNIX, 216 bytes) after the fixed part; bounds below it make no sense. */
export const V2_MIN_MAX = 16 + 216;

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function detectV1(head: Uint8Array): Detection<ProxyInfo> {
  const limit = Math.min(head.length, V1_MAX);
  let end = -1;
  for (let i = V1_PREFIX.length; i < limit - 1; i++) {
    if (head[i] === 0x0d && head[i + 1] === 0x0a) {
      end = i;
      break;
    }
  }
  if (end < 0) return head.length >= V1_MAX ? NO : MORE;
  const line = Buffer.from(head.subarray(0, end)).toString('latin1');
  const parts = line.split(' ');
  const headerLength = end + 2;
  if (parts[1] === 'UNKNOWN') return match({ version: 1, headerLength });
  if (parts.length !== 6) return NO;
  const [, family, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const okFamily = (family === 'TCP4' && isIPv4(src) && isIPv4(dst)) || (family === 'TCP6' && isIPv6(src) && isIPv6(dst));
  if (!okFamily || !isPort(sport) || !isPort(dport)) return NO;
  return match({ version: 1, headerLength, source: { address: src, port: Number(sport) } });
}

function isPort(s: string): boolean {
  if (!/^(0|[1-9][0-9]{0,4})$/.test(s)) return false;
  return Number(s) <= 65535;
}

function detectV2(head: Uint8Array, maxHeaderBytes: number): Detection<ProxyInfo> {
  if (head.length < 16) return MORE;
  const verCmd = head[12] ?? 0;
  if (verCmd >> 4 !== 2) return NO;
  const command = verCmd & 0x0f;
  if (command > 1) return NO;
  const family = head[13] ?? 0;
  const length = ((head[14] ?? 0) << 8) | (head[15] ?? 0);
  const headerLength = 16 + length;
  if (headerLength > maxHeaderBytes) return NO;
  if (head.length < headerLength) return MORE;
  // LOCAL: the balancer talks for itself (health check); keep the connection's own address.
  if (command === 0) return match({ version: 2, headerLength });
  const body = Buffer.from(head.subarray(16, headerLength));
  if (family === 0x11) {
    if (length < 12) return NO;
    const address = `${body[0]}.${body[1]}.${body[2]}.${body[3]}`;
    return match({ version: 2, headerLength, source: { address, port: body.readUInt16BE(8) } });
  }
  if (family === 0x21) {
    if (length < 36) return NO;
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
    return match({ version: 2, headerLength, source: { address: compressV6(groups), port: body.readUInt16BE(32) } });
  }
  // AF_UNSPEC or AF_UNIX: no usable source; treat like LOCAL.
  return match({ version: 2, headerLength });
}

/** Shortest textual form, so the address compares equal to what Node reports for sockets. */
function compressV6(groups: string[]): string {
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < groups.length; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/**
 * A PROXY detector accepting v2 headers of at most `maxV2HeaderBytes` in all (clamped to
 * V2_MIN_MAX..V2_HARD_MAX). The listener's detection byte cap and deadline still apply on top.
 */
export function createProxyDetector(opts: { readonly maxV2HeaderBytes?: number } = {}): Detector<ProxyInfo> {
  const maxV2 = Math.min(V2_HARD_MAX, Math.max(V2_MIN_MAX, Math.floor(opts.maxV2HeaderBytes ?? V2_DEFAULT_MAX)));
  return {
    name: 'proxy',
    detect(head: Uint8Array): Detection<ProxyInfo> {
      if (head.length === 0) return MORE;
      if (head[0] === 0x50) {
        const s = prefixState(head, V1_PREFIX);
        return s === 'match' ? detectV1(head) : s === 'more' ? MORE : NO;
      }
      if (head[0] === 0x0d) {
        const s = prefixState(head, V2_SIGNATURE);
        return s === 'match' ? detectV2(head, maxV2) : s === 'more' ? MORE : NO;
      }
      return NO;
    },
  } satisfies Detector<ProxyInfo>;
}

/** With the default bound (V2_DEFAULT_MAX). */
export const proxyDetector = createProxyDetector();
