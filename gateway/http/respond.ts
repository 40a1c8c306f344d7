/**
 * Writing answers: JSON errors for the API (CONTRACT section 5) and raw status lines for sockets
 * that left the HTTP server (CONNECT, refused upgrades).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { STATUS_CODES } from 'node:http';
import { OneportError, toOneportError } from '../errors.js';

export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
};

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string | string[]> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(text);
}

export function sendError(res: ServerResponse, e: unknown): OneportError {
  const err = toOneportError(e);
  const headers: Record<string, string> = {};
  if (err.retryAfter !== undefined) headers['Retry-After'] = String(err.retryAfter);
  if (err.status === 401) headers['WWW-Authenticate'] = 'Bearer realm="oneport"';
  if (!res.headersSent) sendJson(res, err.status, err.toJSON(), headers);
  else res.destroy();
  return err;
}

/**
 * A complete HTTP/1.1 response on a raw socket, then close. `proxy` turns 401 into
 * 407 + Proxy-Authenticate (RFC 9110 section 15.5.8), as a CONNECT proxy must answer.
 */
export function writeRawError(socket: Duplex, e: unknown, opts: { proxy?: boolean; extraHeaders?: Record<string, string> } = {}): OneportError {
  const err = toOneportError(e);
  let status = err.status;
  const headers: Record<string, string> = { ...opts.extraHeaders };
  if (opts.proxy && status === 401) {
    status = 407;
    headers['Proxy-Authenticate'] = 'Basic realm="oneport"';
  }
  if (err.retryAfter !== undefined) headers['Retry-After'] = String(err.retryAfter);
  writeRaw(socket, status, JSON.stringify(err.toJSON()), { 'Content-Type': 'application/json', ...headers });
  return err;
}

export function writeRaw(socket: Duplex, status: number, body: string, headers: Record<string, string> = {}): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`];
  for (const [k, v] of Object.entries({ ...headers, 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close' })) {
    lines.push(`${k}: ${v}`);
  }
  endThenDrop(socket, `${lines.join('\r\n')}\r\n\r\n${body}`);
}

/** Write a last answer and end; a client that does not read it (or never closes its side) is dropped after 2 s. */
export function endThenDrop(socket: Duplex, last: string | Buffer): void {
  socket.end(last);
  const t = setTimeout(() => socket.destroy(), 2000);
  t.unref();
  socket.once('close', () => clearTimeout(t));
}

/** The request path without its query: tickets ride in queries and must not reach logs. */
export function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

/** The request target as a URL; a target that does not parse is the client's error (400). */
export function parseRequestUrl(target: string | undefined): URL {
  try {
    return new URL(target ?? '/', 'https://gateway.invalid');
  } catch {
    throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'malformed request target');
  }
}

/** One %-encoded path segment; a malformed escape is the client's error (400). */
export function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'malformed %-escape in the path');
  }
}

/**
 * A Host header we are willing to echo (a redirect, a .vv file's proxy=): host or host:port, and
 * only one that makes a valid https URL. The shape alone lets through `localhost:99999`, `[::::]`
 * or `256.1.1.1`, which would become a Location or a proxy= line no client can use.
 */
export function safeHost(host: string | undefined): string | undefined {
  if (!host || host.length > 255) return undefined;
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(host)) return undefined;
  return URL.canParse(`https://${host}/`) ? host : undefined;
}
