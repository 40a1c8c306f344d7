/**
 * Dialling a console. The address always comes from the directory (routing.ts); this module only
 * knows how to connect under a deadline and with cancellation, and counts every attempt so tests
 * and operators can see that refused requests never caused an outbound connection. Failures are
 * coded (failures.ts): a refused console and a silent one are different answers.
 */
import net from 'node:net';
import type { Metrics } from '../metrics.js';
import type { Endpoint } from '../directory/directory.js';
import { ReachFailure, dialFailure } from './failures.js';

export interface DialOptions {
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly metrics: Metrics;
}

const ignoreError = (): void => {};

export function dial(endpoint: Endpoint, opts: DialOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    opts.metrics.dials.inc({ result: 'attempt' });
    if (opts.signal?.aborted) {
      reject(new ReachFailure('CLIENT_GONE'));
      return;
    }
    const socket = net.connect({ host: endpoint.host, port: endpoint.port, noDelay: true, allowHalfOpen: true });
    let settled = false;
    const finish = (err?: ReachFailure, result: 'error' | 'timeout' = 'error'): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.removeListener('connect', onConnect);
      if (err) {
        socket.destroy();
        opts.metrics.dials.inc({ result });
        reject(err);
      } else {
        opts.metrics.dials.inc({ result: 'ok' });
        // An error listener stays for the socket's life: the pump adds its own, but an error in
        // the gap between here and there must not crash the process. A shared one: this one
        // would keep the dial's closures and timer for the tunnel's life.
        socket.removeListener('error', onError);
        socket.on('error', ignoreError);
        resolve(socket);
      }
    };
    const onError = (e: NodeJS.ErrnoException): void => {
      const failure = dialFailure(e.code);
      finish(new ReachFailure(failure, { message: `${failure === 'DIAL_REFUSED' ? 'the console refused the connection' : 'the console did not answer'} (${e.code ?? 'error'})`, cause: e }));
    };
    socket.on('error', onError);
    const onConnect = (): void => finish();
    socket.once('connect', onConnect);
    const onAbort = (): void => finish(new ReachFailure('CLIENT_GONE'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => finish(new ReachFailure('DIAL_TIMEOUT'), 'timeout'), opts.timeoutMs);
  });
}
