/**
 * For tests of the RDCleanPath entrance: what an RDP server does first (read one X.224 Connection
 * Request, answer a Connection Confirm, then, when it selects TLS, TLS with its own certificate,
 * echoing what comes through it), and the client's side in raw PDUs.
 */
import tls from 'node:tls';
import type { WebSocket } from 'ws';
import { type RdcleanpathPdu, decodeRdcleanpath, encodeRdcleanpath, rdcleanpathPdu } from '../../protocols/rdcleanpath.js';
import { parseConnectionRequest } from '../../protocols/rdp.js';
import { FREERDP_CR_TLS, SHADOW_CC_SSL } from '../fixtures/rdp-packets.js';
import { type Backend, startBackend } from './net.js';
import { testPki } from './certs.js';
import { deadline } from './wait.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface RdpConsole extends Backend {
  /** The X.224 Connection Requests it received, in order. */
  readonly requests: Buffer[];
  /** Its certificate (PEM). */
  readonly cert: string;
}

/** @param confirm what it answers; an answer that selects no TLS (a negotiation failure) ends the connection. */
export async function startRdpConsole(t: Teardown, confirm: Buffer = SHADOW_CC_SSL): Promise<RdpConsole> {
  const { server } = testPki(['console.internal']);
  const requests: Buffer[] = [];
  const selectsTls = confirm.length === 19 && confirm[11] === 0x02 && (confirm[15] ?? 0) !== 0;
  const backend = await startBackend(t, (s) => {
    let got = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const cr = parseConnectionRequest(got);
      if (cr.kind === 'more') return;
      s.removeListener('data', onData);
      if (cr.kind === 'error') return void s.destroy();
      requests.push(got.subarray(0, cr.length));
      s.write(confirm);
      if (!selectsTls) return void s.end();
      const secure = new tls.TLSSocket(s, { isServer: true, cert: server.cert, key: server.key });
      secure.on('error', () => {});
      secure.pipe(secure);
    };
    s.on('data', onData);
  });
  return Object.assign(backend, { requests, cert: server.cert });
}

/** A PDU as DER (throws on what the codec refuses). */
export function der(pdu: RdcleanpathPdu): Buffer {
  const bytes = encodeRdcleanpath(pdu);
  if (!bytes.ok) throw new Error(bytes.reason);
  return bytes.value;
}

/** An RDCleanPath request as IronRDP sends it (a TLS-only Connection Request), with `extra` fields over it. */
export function request(proxyAuth: string, extra: Partial<RdcleanpathPdu> = {}): Buffer {
  return der({ ...rdcleanpathPdu({ type: 'request', destination: 'win:3389', proxyAuth, x224ConnectionRequest: FREERDP_CR_TLS }), ...extra });
}

/** The first message the gateway sends, decoded as an RDCleanPath PDU. */
export function answer(ws: WebSocket, ms = 10_000): Promise<RdcleanpathPdu> {
  const got = new Promise<RdcleanpathPdu>((resolve, reject) => {
    ws.once('message', (data: Buffer) => {
      const d = decodeRdcleanpath(data);
      if (d.kind === 'done') resolve(d.value);
      else reject(new Error(`not a PDU: ${d.kind === 'error' ? d.reason : 'cut short'}`));
    });
    ws.once('close', (code: number, reason: Buffer) => reject(new Error(`closed ${code} ${reason.toString()} without an answer`)));
  });
  return Promise.race([got, deadline(ms, 'an RDCleanPath answer')]);
}

/** Send `data` and collect as many bytes back. */
export function roundTrip(ws: WebSocket, data: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const onMessage = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      if (got.length < data.length) return;
      ws.removeListener('message', onMessage);
      resolve(got);
    };
    ws.on('message', onMessage);
    ws.send(data);
  });
}
