/**
 * "Does this console answer its protocol?" A recovering VM is marked running only when its console
 * says something only that protocol says (session continuity):
 * - VNC: the server speaks first: "RFB xxx.yyy\n" (RFC 6143 7.1.1);
 * - SPICE: we send a SpiceLinkHeader + SpiceLinkMess for the main channel; the server answers
 *   with a SpiceLinkReply whose header starts with the magic "REDQ";
 * - RDP: we send an X.224 Connection Request (TPKT, MS-RDPBCGR 2.2.1.1) with an RDP
 *   Negotiation Request; the server answers with a TPKT whose X.224 code is Connection Confirm
 *   (0xD0).
 * Each probe is one short connection that is closed right after the answer; nothing is logged in.
 */
import { type Detection, MORE, NO, match } from './detector.js';
import { vncDetector } from './vnc.js';
import { spiceDetector } from './spice.js';

export type ProbeProtocol = 'vnc' | 'spice' | 'rdp';

const SPICE_MAJOR = 2;
const SPICE_LINK_REPLY_BYTES = 4 + 162 + 4 + 4 + 4;

/** What the prober sends first (VNC: nothing, the server speaks first). */
export function probeGreeting(protocol: ProbeProtocol): Buffer {
  if (protocol === 'spice') {
    // SpiceLinkHeader: magic, major 2, minor 2, size of what follows (18).
    const header = Buffer.alloc(16);
    header.write('REDQ', 0, 'latin1');
    header.writeUInt32LE(2, 4);
    header.writeUInt32LE(2, 8);
    header.writeUInt32LE(18, 12);
    // SpiceLinkMess: connection id 0, channel type 1 (main), channel id 0, no caps, caps offset 18.
    const mess = Buffer.alloc(18);
    mess.writeUInt32LE(0, 0);
    mess.writeUInt8(1, 4);
    mess.writeUInt8(0, 5);
    mess.writeUInt32LE(0, 6);
    mess.writeUInt32LE(0, 10);
    mess.writeUInt32LE(18, 14);
    return Buffer.concat([header, mess]);
  }
  if (protocol === 'rdp') {
    // TPKT (version 3, length 19) + X.224 CR (length 14, code 0xE0, dst 0, src 0, class 0)
    // + RDP_NEG_REQ (type 1, flags 0, length 8, requested protocols TLS | CredSSP = 3).
    return Buffer.from([0x03, 0x00, 0x00, 0x13, 0x0e, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00]);
  }
  return Buffer.alloc(0);
}

/** Is `head` (what the console sent back so far) the protocol's answer? Three-way, like detectors. */
export function probeAnswer(protocol: ProbeProtocol, head: Uint8Array): Detection<undefined> {
  if (protocol === 'vnc') {
    const d = vncDetector.detect(head);
    return d.kind === 'match' ? match(undefined) : d;
  }
  if (protocol === 'spice') {
    // A SpiceLinkReply: magic, major 2, and a body at least as large as the fixed SpiceLinkReply
    // (error, 162-byte public key, three counts: 178 bytes). Our own request echoed back is not.
    const d = spiceDetector.detect(head);
    if (d.kind !== 'match') return d;
    if (head.length < 16) return MORE;
    const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
    return b.readUInt32LE(4) === SPICE_MAJOR && b.readUInt32LE(12) >= SPICE_LINK_REPLY_BYTES ? match(undefined) : NO;
  }
  // RDP: TPKT version 3, then the X.224 length indicator, then the code (high nibble 0xD = CC).
  if (head.length >= 1 && head[0] !== 0x03) return NO;
  if (head.length >= 2 && head[1] !== 0x00) return NO;
  if (head.length < 6) return MORE;
  return ((head[5] ?? 0) & 0xf0) === 0xd0 ? match(undefined) : NO;
}
