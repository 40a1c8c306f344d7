/**
 * The two HTTP servers behind the port: one for terminated TLS connections (API, portal,
 * WebSocket, CONNECT) and one for clear text (CONNECT with a ticket; GET is redirected to https;
 * anything else 400). Neither listens itself: the listener hands them connections.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { GatewayContext } from '../context.js';
import { OneportError } from '../errors.js';
import { handleApi } from './api.js';
import { guard } from './guard.js';
import { handleConnect } from './connect.js';
import { createWebSocketServer, handleUpgrade } from './websocket.js';
import { safeHost, sendError, writeRawError, SECURITY_HEADERS } from './respond.js';
import type { Portal } from './portal.js';

function serverOptions(ctx: GatewayContext): http.ServerOptions {
  const h = ctx.config.http;
  return {
    maxHeaderSize: h.maxHeaderBytes,
    headersTimeout: h.headersTimeoutMs,
    requestTimeout: h.requestTimeoutMs,
    keepAliveTimeout: h.keepAliveTimeoutMs,
    // Timeouts are enforced on this tick; keep it well under the shortest of them.
    connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(h.headersTimeoutMs / 4))),
    // HTTP/1.1 CONNECT clients in the wild omit Host (CONTRACT section 3).
    requireHostHeader: false,
    noDelay: true,
  };
}

/** Node stops at maxHeadersCount silently; we let one more through and refuse the request. */
function tooManyHeaders(ctx: GatewayContext, req: IncomingMessage): boolean {
  return req.rawHeaders.length / 2 > ctx.config.http.maxHeaders;
}

function onClientError(ctx: GatewayContext, err: NodeJS.ErrnoException, socket: Duplex): void {
  const code = err.code ?? '';
  if (code === 'ECONNRESET' || !socket.writable) {
    // After a parse error Node reports every further chunk the client sends as another error.
    // Once our answer is on its way (the socket was ended; writeRaw destroys it after a linger),
    // destroying it now would drop that answer (a TLS socket loses its pending write) or reset it.
    if (code !== 'ECONNRESET' && socket.writableEnded) return;
    socket.destroy();
    return;
  }
  ctx.metrics.connections.inc({ result: `http-error-${code || 'unknown'}` });
  if (code === 'HPE_HEADER_OVERFLOW') {
    writeRawError(socket, new OneportError('ONEPORT_ERR_HEADERS_TOO_LARGE'));
  } else if (code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    writeRaw408(socket);
  } else {
    writeRawError(socket, new OneportError('ONEPORT_ERR_BAD_REQUEST'));
  }
}

function writeRaw408(socket: Duplex): void {
  socket.end('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  setTimeout(() => socket.destroy(), 1000).unref();
}

function configure(ctx: GatewayContext, server: http.Server): http.Server {
  server.maxHeadersCount = ctx.config.http.maxHeaders + 1;
  // These servers never listen (the listener hands them sockets), but Node starts enforcing
  // headersTimeout and requestTimeout only on 'listening'. Without this, slowloris wins.
  server.emit('listening');
  server.on('clientError', (err, socket) => onClientError(ctx, err as NodeJS.ErrnoException, socket));
  return server;
}

function refuseTooManyHeaders(ctx: GatewayContext, req: IncomingMessage, socket: Duplex): boolean {
  if (!tooManyHeaders(ctx, req)) return false;
  writeRawError(socket, new OneportError('ONEPORT_ERR_HEADERS_TOO_LARGE', 'too many request headers'));
  return true;
}

export function createTlsHttpServer(ctx: GatewayContext, portal: Portal): http.Server {
  const wss = createWebSocketServer(ctx);
  const server = configure(ctx, http.createServer(serverOptions(ctx)));
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (tooManyHeaders(ctx, req)) {
      res.setHeader('Connection', 'close');
      sendError(res, new OneportError('ONEPORT_ERR_HEADERS_TOO_LARGE', 'too many request headers'));
      return;
    }
    res.setHeader('Strict-Transport-Security', 'max-age=31536000');
    const work = (async () => {
      if (await handleApi(ctx, req, res, { local: false })) return;
      if (portal.serve(req, res)) return;
      sendError(res, new OneportError('ONEPORT_ERR_NOT_FOUND'));
    })();
    guard(ctx, 'request', work, (e) => sendError(res, e));
  });
  server.on('connect', (req: IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (refuseTooManyHeaders(ctx, req, socket)) return;
    guard(ctx, 'connect', handleConnect(ctx, req, socket, head), (e) => writeRawError(socket, e));
  });
  server.on('upgrade', (req: IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (refuseTooManyHeaders(ctx, req, socket)) return;
    guard(ctx, 'upgrade', handleUpgrade(ctx, wss, req, socket, head), (e) => writeRawError(socket, e));
  });
  return server;
}

export function createClearHttpServer(ctx: GatewayContext): http.Server {
  const server = configure(ctx, http.createServer(serverOptions(ctx)));
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (tooManyHeaders(ctx, req)) {
      res.setHeader('Connection', 'close');
      sendError(res, new OneportError('ONEPORT_ERR_HEADERS_TOO_LARGE', 'too many request headers'));
      return;
    }
    if (req.method === 'GET' || req.method === 'HEAD') {
      const host = safeHost(req.headers.host) ?? ctx.config.serverNames[0] ?? 'localhost';
      const location = `https://${host}${(req.url ?? '/').startsWith('/') ? req.url : '/'}`;
      res.writeHead(301, { ...SECURITY_HEADERS, Location: location, 'Content-Length': 0, Connection: 'close' });
      res.end();
      return;
    }
    sendError(res, new OneportError('ONEPORT_ERR_BAD_REQUEST', 'in clear text this port only speaks CONNECT with a console ticket; use https://'));
  });
  server.on('connect', (req: IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (refuseTooManyHeaders(ctx, req, socket)) return;
    guard(ctx, 'connect', handleConnect(ctx, req, socket, head), (e) => writeRawError(socket, e));
  });
  server.on('upgrade', (req: IncomingMessage, socket: net.Socket) => {
    writeRawError(socket, new OneportError('ONEPORT_ERR_BAD_REQUEST', 'WebSocket tunnels need TLS: use wss://'));
  });
  return server;
}

