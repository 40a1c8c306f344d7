/**
 * SPICE link header detector (SPICE protocol, "Link stage": SpiceLinkHeader magic "REDQ").
 * Checks that a tunnel declared as SPICE carries SPICE (the protocol check,
 * gateway/tunnel/console-handshake.ts); not a listener route.
 */
import { type Detection, type Detector, MORE, NO, match, prefixState } from './detector.js';

const MAGIC = Buffer.from('REDQ', 'latin1');

export const spiceDetector = {
  name: 'spice',
  detect(head: Uint8Array): Detection<undefined> {
    const s = prefixState(head, MAGIC);
    return s === 'match' ? match(undefined) : s === 'more' ? MORE : NO;
  },
} satisfies Detector<undefined>;
