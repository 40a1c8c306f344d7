/**
 * WebSocket clients for tests, with the `ws` library: open one to a gateway on loopback, await
 * its opening or its close. Every wait is bounded (a guard, see wait.ts).
 */
import { WebSocket, type ClientOptions } from 'ws';
import { deadline } from './wait.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

/**
 * A WebSocket to `path` on a gateway at 127.0.0.1 (trusting its CA), offering subprotocol
 * `binary` unless told otherwise. Its 'error' events are swallowed (tests await 'open' or
 * 'close'); it is terminated at teardown.
 */
export function openWs(
  t: Teardown,
  gw: { readonly port: number; readonly caCert: string },
  path: string,
  opts: ClientOptions = {},
  protocols: string[] = ['binary'],
  scheme = 'wss',
): WebSocket {
  const ws = new WebSocket(`${scheme}://127.0.0.1:${gw.port}${path}`, protocols, { ca: gw.caCert, ...opts });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  return ws;
}

/** Resolves once `ws` is open; rejects if it closes first (naming the close code) or after `ms`. */
export function opened(ws: WebSocket, ms = 5000): Promise<void> {
  const result = new Promise<void>((resolve, reject) => {
    const onClose = (code: number, reason: Buffer): void => reject(new Error(`closed ${code} ${reason.toString()} before it opened`));
    ws.once('close', onClose);
    ws.once('open', () => {
      ws.removeListener('close', onClose);
      resolve();
    });
  });
  return Promise.race([result, deadline(ms, 'WebSocket open')]);
}

/** The close code and reason the client got; rejects if it has not closed within `ms`. */
export function closeOf(ws: WebSocket, ms = 5000): Promise<{ code: number; reason: string }> {
  const result = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() }));
  });
  return Promise.race([result, deadline(ms, 'WebSocket close')]);
}
