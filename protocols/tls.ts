/**
 * TLS ClientHello detector (RFC 8446 section 5.1, record layer; RFC 5246 section 6.2.1).
 *
 * A TLS connection opens with a handshake record: content type 0x16, legacy record version 0x03
 * 0x00-0x04, a 16-bit length, then a ClientHello (handshake type 1). We only look at the record
 * header and the handshake type; SNI and ALPN are read by Node's TLS stack after hand-off.
 */
import { type Detection, type Detector, MORE, NO, match } from './detector.js';

export interface TlsInfo {
  /** Length of the first record's body, as announced. */
  readonly recordLength: number;
}

/** The largest TLSPlaintext fragment (RFC 8446 section 5.1): 2^14 bytes. */
const MAX_RECORD = 16384;

export const tlsDetector = {
  name: 'tls',
  detect(head: Uint8Array): Detection<TlsInfo> {
    if (head.length === 0) return MORE;
    if (head[0] !== 0x16) return NO;
    if (head.length < 2) return MORE;
    if (head[1] !== 0x03) return NO;
    if (head.length < 3) return MORE;
    if ((head[2] ?? 0xff) > 0x04) return NO;
    if (head.length < 5) return MORE;
    const recordLength = ((head[3] ?? 0) << 8) | (head[4] ?? 0);
    if (recordLength === 0 || recordLength > MAX_RECORD) return NO;
    if (head.length < 6) return MORE;
    // Handshake type 1 = client_hello.
    if (head[5] !== 0x01) return NO;
    return match({ recordLength });
  },
} satisfies Detector<TlsInfo>;
