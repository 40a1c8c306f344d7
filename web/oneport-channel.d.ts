// Types for oneport-channel.js (the browser library is plain JavaScript, served as is).
export interface ChannelStatus {
  state: 'open' | 'resuming' | 'resumed' | 'closed';
  attempt?: number;
  session?: string;
}

export interface ChannelOptions {
  /** The resume token from the ticket answer. */
  resume: string;
  /** A WebSocket constructor (the browser's by default; `ws` in Node). */
  WebSocket?: unknown;
  /** Extra constructor options (Node's `ws`: TLS settings). */
  wsOptions?: object;
  onStatus?: (s: ChannelStatus) => void;
  /**
   * Where to resume when a draining gateway names a node (4001 `{"resume":true,"node":id}`): a
   * URL whose origin is used; undefined (or no `route`): the same address, a balancer's.
   */
  route?: (node: string) => string | undefined;
  ackBytes?: number;
  ackIntervalMs?: number;
  retryMs?: number;
}

export class OneportChannel {
  constructor(url: string, opts: ChannelOptions);
  readonly url: string;
  readyState: number;
  binaryType: string;
  protocol: string;
  session: string | undefined;
  graceMs: number;
  received: number;
  sent: number;
  leg: unknown;
  onopen: ((ev: object) => void) | null;
  onmessage: ((ev: { data: ArrayBuffer }) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean: boolean }) => void) | null;
  onerror: ((ev: object) => void) | null;
  addEventListener(type: 'open' | 'message' | 'close' | 'error', fn: (ev: never) => void): void;
  removeEventListener(type: 'open' | 'message' | 'close' | 'error', fn: (ev: never) => void): void;
  send(data: ArrayBuffer | ArrayBufferView | string): void;
  close(code?: number, reason?: string): void;
  /** Reconnect the dropped leg to the same session, after `waitMs` or the backoff (internal; tests may stub it). */
  resume(waitMs?: number): void;
}
