/**
 * Clear-text HTTP/1.x request-line detector (RFC 9112 section 3).
 *
 * Matches when the connection starts with a known method token followed by a space. Only the
 * method is examined: the request itself is parsed by Node's HTTP parser after hand-off, with the
 * configured header limits.
 */
import { type Detection, type Detector, MORE, NO, match } from './detector.js';

export interface HttpInfo {
  readonly method: string;
}

/** Methods we recognise as "this is HTTP". Anything else is not HTTP to us. */
export const HTTP_METHODS = [
  'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH',
] as const;

const encoded = HTTP_METHODS.map((m) => ({ method: m, bytes: Buffer.from(`${m} `, 'latin1') }));

export const httpDetector = {
  name: 'http',
  detect(head: Uint8Array): Detection<HttpInfo> {
    if (head.length === 0) return MORE;
    let anyPrefix = false;
    for (const { method, bytes } of encoded) {
      const n = Math.min(head.length, bytes.length);
      let ok = true;
      for (let i = 0; i < n; i++) {
        if (head[i] !== bytes[i]) {
          ok = false;
          break;
        }
      }
      if (!ok) continue;
      if (head.length >= bytes.length) return match({ method });
      anyPrefix = true;
    }
    return anyPrefix ? MORE : NO;
  },
} satisfies Detector<HttpInfo>;
