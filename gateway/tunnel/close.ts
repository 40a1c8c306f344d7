/**
 * How a tunnel's end reaches a WebSocket client: one table from the reason the tunnel ended to the
 * close code (CONTRACT section 4), and one way to close a WebSocket politely with a bound on how
 * long a client that never answers the close handshake is kept.
 */
import { WebSocket } from 'ws';
import { ERRORS } from '../errors.js';
import { HANDSHAKE_ERROR, type HandshakeFailure } from './console-stream.js';
import type { CloseReason } from './pump.js';

/** The close code and default reason text for each way a tunnel ends. */
export const CLOSE_CODES: Readonly<Record<CloseReason, { readonly code: number; readonly message: string }>> = {
  'client-closed': { code: 1000, message: 'console closed' },
  'console-closed': { code: 1000, message: 'console closed' },
  'client-error': { code: 1000, message: 'console closed' },
  'console-error': { code: 4502, message: 'console connection lost' },
  idle: { code: 1000, message: 'idle timeout' },
  // Stream tunnels only (a WebSocket has no half-close); named for the log.
  'half-closed': { code: 1000, message: 'half-closed too long' },
  shutdown: { code: 1001, message: 'gateway shutting down' },
  // CONTRACT section 4: reconnect now (with the resume token), after retryMs (jittered, so a
  // crowd does not come back at once). Whoever reroutes usually supplies the text (naming the node).
  rerouted: { code: 4001, message: '{"retryMs":0}' },
  'too-large': { code: 1009, message: 'message too large' },
  revoked: { code: 4003, message: 'access revoked' },
  // Only parked sessions are ended by a cap, so no client sees this; it names the reason in the log.
  'session-cap': { code: 1013, message: 'resumable session limit reached' },
  // The broker supplies the text with the limit that applied (sessionExpiredMessage).
  'session-expired': { code: 4008, message: '{"code":"ONEPORT_ERR_SESSION_EXPIRED"}' },
  // The console handshake failed after the upgrade (console-handshake.ts): the code's own close.
  'console-auth': handshakeClose('console-auth'),
  'console-protocol': handshakeClose('console-protocol'),
  'client-protocol': handshakeClose('client-protocol'),
};

function handshakeClose(failure: HandshakeFailure): { code: number; message: string } {
  const code = HANDSHAKE_ERROR[failure];
  return { code: ERRORS[code].wsClose, message: JSON.stringify({ code }) };
}

/** The close reason of a session that reached its maximum session time: JSON naming the limit. */
export function sessionExpiredMessage(maxSessionMs: number): string {
  return JSON.stringify({ code: 'ONEPORT_ERR_SESSION_EXPIRED', maxSessionMs });
}

/**
 * A reroute's close reason: JSON with a jittered `retryMs` below `boundMs`, and the new owner when
 * known. `resume`: the session is kept (a drained entry node): resume it, with the session id and
 * byte count, rather than start a fresh one.
 */
export function rerouteMessage(boundMs: number, node?: string, opts: { resume?: boolean } = {}): string {
  return JSON.stringify({ retryMs: Math.floor(Math.random() * boundMs), ...(node !== undefined ? { node } : {}), ...(opts.resume ? { resume: true } : {}) });
}

/** The close code and text for `reason`; a reroute gets a jittered retryMs below `rerouteRetryMs`. */
export function wsCloseFor(reason: CloseReason, rerouteRetryMs = 500): { code: number; message: string } {
  if (reason === 'rerouted') return { code: 4001, message: rerouteMessage(rerouteRetryMs) };
  return CLOSE_CODES[reason];
}

/** Start the close handshake (if the socket is still open) and cut a client that never answers it after `lingerMs`. */
export function closeWebSocket(ws: WebSocket, code: number, message: string, lingerMs = 5000): void {
  if (ws.readyState !== WebSocket.OPEN && ws.readyState !== WebSocket.CONNECTING) return;
  ws.close(code, message);
  const t = setTimeout(() => ws.terminate(), lingerMs);
  t.unref();
  ws.once('close', () => clearTimeout(t));
}
