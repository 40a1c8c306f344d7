/**
 * Native RDP on the one port (README "Native RDP"; CONTRACT section 7): a stock client (mstsc, the
 * Remote Desktop apps, FreeRDP, thin clients) connects straight to the gateway in clear text and
 * sends what it always sends first, an optional MS-RDPEPS preconnection PDU and the TPKT + X.224
 * Connection Request. The ticket rides there as `<ticket>.<vm>`: in the preconnection blob
 * (`pcb:s:`, FreeRDP `/pcb:`) or as the routing token (`loadbalanceinfo:s:`, FreeRDP
 * `/load-balance-info:`, with or without `Cookie: msts=`).
 *
 * The listener hands the connection over once the first bytes say RDP (paused, bytes put back).
 * This entrance reads the whole opening under nativeRdp.openingTimeoutMs, at most
 * MAX_OPENING_BYTES, parses it with protocols/rdp.ts, and turns it into a TunnelRequest (a ticket,
 * protocol rdp) and an RdpLeg for the broker. Every refusal, a malformed opening included, is the
 * leg's RDP_NEG_FAILURE at once through `refuseTunnel`; nothing is dialled before the broker has
 * checked the ticket.
 */
import type net from 'node:net';
import type { GatewayContext } from '../context.js';
import type { VmRecord } from '../directory/directory.js';
import { connInfo } from '../conninfo.js';
import { OneportError } from '../errors.js';
import { Peeked } from '../listener.js';
import { isAddressLiteral, splitHostTicket } from '../routing.js';
import { openTunnel, refuseTunnel } from '../tunnel/broker.js';
import { RdpLeg } from '../tunnel/legs/rdp.js';
import type { TunnelRequest } from '../tunnel/request.js';
import {
  PCB_MAX_CHARS, PCB_V2_MIN_LENGTH, X224_MAX_LENGTH, type RdpOpening, openingCarrier, parseRdpOpening, requestForConsole,
} from '../../protocols/rdp.js';

/** The largest opening there is: a preconnection PDU with the longest blob we take, then a Connection Request. */
export const MAX_OPENING_BYTES = PCB_V2_MIN_LENGTH + 2 * PCB_MAX_CHARS + X224_MAX_LENGTH;

export type OpeningRead =
  | { readonly kind: 'opening'; readonly opening: RdpOpening; readonly rest: Buffer }
  | { readonly kind: 'malformed'; readonly reason: string }
  | { readonly kind: 'timeout' }
  | { readonly kind: 'closed' };

/**
 * Read a native RDP opening from `socket` (paused, with the detected bytes put back), under a
 * deadline and a byte cap. The socket is paused again when it resolves; `rest` is what the client
 * sent after its opening (nothing, for every real client: it waits for the Connection Confirm).
 */
export function readOpening(socket: net.Socket, timeoutMs: number): Promise<OpeningRead> {
  if (socket.destroyed) return Promise.resolve({ kind: 'closed' });
  return new Promise((resolve) => {
    const peeked = new Peeked(Buffer.alloc(0));
    const finish = (r: OpeningRead): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onClosed);
      socket.removeListener('close', onClosed);
      socket.pause();
      resolve(r);
    };
    const onData = (chunk: Buffer): void => {
      peeked.append(chunk);
      const p = parseRdpOpening(peeked.bytes);
      if (p.kind === 'done') finish({ kind: 'opening', opening: p.value, rest: Buffer.from(peeked.bytes.subarray(p.length)) });
      else if (p.kind === 'error') finish({ kind: 'malformed', reason: p.reason });
      // The parser bounds every length it reads; this is the backstop, should it ever not.
      else if (peeked.length > MAX_OPENING_BYTES) finish({ kind: 'malformed', reason: 'opening longer than any valid one' });
    };
    const onClosed = (): void => finish({ kind: 'closed' });
    const timer = setTimeout(() => finish({ kind: 'timeout' }), timeoutMs);
    socket.on('data', onData);
    socket.on('end', onClosed);
    socket.on('close', onClosed);
    socket.resume();
  });
}

/**
 * The tunnel a parsed opening asks for: `<ticket>.<vm>` from its carrier (upper case folded, as in
 * a CONNECT host name). Throws a OneportError: no carrier or no ticket in it (401), two carriers
 * that disagree (400), an address instead of a VM name (403).
 */
export function nativeRequest(opening: RdpOpening, client: string): TunnelRequest {
  const carrier = openingCarrier(opening);
  if (!carrier.ok) throw new OneportError('ONEPORT_ERR_BAD_REQUEST', carrier.reason);
  const split = carrier.value === null ? undefined : splitHostTicket(carrier.value.trim().toLowerCase());
  if (!split) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'send <ticket>.<vm> as the preconnection blob or the routing token');
  if (isAddressLiteral(split.vm)) throw new OneportError('ONEPORT_ERR_ADDRESS_LITERAL');
  return { vmName: split.vm, credential: { kind: 'ticket', ticket: split.ticket }, hints: { protocol: 'rdp' }, tls: false, client, hold: true };
}

/** May a native client reach this VM? The node's switch (config nativeRdp.enabled) and the VM record's. */
export function nativeRdpOn(enabled: boolean, vm: Pick<VmRecord, 'nativeRdp'>): boolean {
  return enabled && vm.nativeRdp !== false;
}

export async function handleNativeRdp(ctx: GatewayContext, socket: net.Socket): Promise<void> {
  const info = connInfo(socket);
  const client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  const acceptedAt = info?.acceptedAt ?? process.hrtime.bigint();
  const read = await readOpening(socket, ctx.config.nativeRdp.openingTimeoutMs);
  if (read.kind === 'closed') {
    socket.destroy();
    return;
  }
  if (read.kind !== 'opening') {
    const leg = new RdpLeg(socket, { client, acceptedAt, toConsole: Buffer.alloc(0) });
    const reason = read.kind === 'timeout' ? `no complete RDP opening within ${ctx.config.nativeRdp.openingTimeoutMs} ms` : `malformed RDP opening: ${read.reason}`;
    refuseTunnel(ctx.broker, leg, new OneportError('ONEPORT_ERR_BAD_REQUEST', reason), 'rdp');
    return;
  }
  const leg = new RdpLeg(socket, { client, acceptedAt, toConsole: Buffer.concat([requestForConsole(read.opening), read.rest]) });
  let request: TunnelRequest;
  try {
    request = nativeRequest(read.opening, client);
  } catch (e) {
    refuseTunnel(ctx.broker, leg, e, 'rdp');
    return;
  }
  await openTunnel(ctx.broker, request, leg);
}
