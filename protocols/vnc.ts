/**
 * RFB ProtocolVersion detector (RFC 6143 section 7.1.1): "RFB xxx.yyy\n", 12 bytes.
 * In RFB the server speaks first, so this recognises a console's banner (health probes, and
 * checking that a VNC endpoint really is VNC: gateway/tunnel/console-handshake.ts), never a
 * client's first bytes.
 */
import { type Detection, type Detector, MORE, NO, match, prefixState } from './detector.js';

export interface RfbVersion {
  readonly major: number;
  readonly minor: number;
}

const PREFIX = Buffer.from('RFB ', 'latin1');

export const vncDetector = {
  name: 'vnc',
  detect(head: Uint8Array): Detection<RfbVersion> {
    const s = prefixState(head, PREFIX);
    if (s !== 'match') return s === 'more' ? MORE : NO;
    if (head.length < 12) {
      for (let i = 4; i < head.length; i++) if (!validAt(head, i)) return NO;
      return MORE;
    }
    for (let i = 4; i < 12; i++) if (!validAt(head, i)) return NO;
    const text = Buffer.from(head.subarray(0, 12)).toString('latin1');
    return match({ major: Number(text.slice(4, 7)), minor: Number(text.slice(8, 11)) });
  },
} satisfies Detector<RfbVersion>;

function validAt(head: Uint8Array, i: number): boolean {
  const c = head[i] ?? 0;
  if (i === 7) return c === 0x2e;
  if (i === 11) return c === 0x0a;
  return c >= 0x30 && c <= 0x39;
}
