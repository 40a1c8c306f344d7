/**
 * The `oneport.v1` legs this node relays to the node holding their session (cluster/relay.ts):
 * message for message, with backpressure, and no session state here. A drain (drain.ts) hands
 * them over: the client is told 4001 `{"resume":true}` and the holder's side is cut as a dropped
 * leg (not a clean close), so the holder parks the session and the client resumes it through
 * another node; the console notices nothing. No socket is opened here: the set and the splice.
 */
import { WebSocket } from 'ws';
import { closeWebSocket } from './close.js';

export interface RelayRequest {
  /** `/tunnel/<vm>/<protocol>?...`: the client's request, as the holder is to see it. */
  readonly path: string;
  readonly vm: string;
  /** The client's address (the holder counts and logs it). */
  readonly client: string;
  /** The portal's session cookie, when the client came with one (`Cookie` header value). */
  readonly cookie?: string | undefined;
  /** Messages the client sent before the relay was up. */
  readonly queued?: readonly Buffer[];
}

/** Bytes sent on one side and not yet flushed above which the other side stops being read. */
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

/** Close codes a peer cannot send on the wire: a leg that just dropped is told 1011. */
const sendable = (c: number): number => (c === 1005 || c === 1006 || c === 1015 ? 1011 : c);

export class Relay {
  private handedOver = false;
  readonly done: Promise<void>;
  private markDone!: () => void;

  constructor(
    readonly client: WebSocket,
    readonly upstream: WebSocket,
    /** The node holding the session. */
    readonly holder: string,
    readonly vm: string,
  ) {
    this.done = new Promise((r) => (this.markDone = r));
    forward(client, upstream);
    forward(upstream, client);
    upstream.on('close', (code: number, reason: Buffer) => {
      if (!this.handedOver) closeWebSocket(client, sendable(code), reason.toString());
      if (client.readyState === WebSocket.CLOSED) this.markDone();
    });
    // The client's leg dropping must look the same to the holder: not a clean 1000 unless it was.
    client.on('close', (code: number) => {
      if (!this.handedOver && (code === 1000 || code === 1001)) upstream.close(code);
      else upstream.terminate();
      if (upstream.readyState === WebSocket.CLOSED) this.markDone();
    });
  }

  /**
   * Send the client elsewhere with its session kept: 4001 with `message` (which says `resume`),
   * and the holder's side cut like a dropped leg, so the holder parks the session for it.
   */
  handOver(message: string): void {
    if (this.handedOver) return;
    this.handedOver = true;
    closeWebSocket(this.client, 4001, message);
    this.upstream.terminate();
  }

  /** End it for good (a stop that cannot hand over): the holder ends the session too. */
  close(code: number, message: string): void {
    closeWebSocket(this.client, code, message);
  }
}

/** Relay `from`'s messages to `to` as they came (text stays text), pausing `from` while `to` is behind. */
function forward(from: WebSocket, to: WebSocket): void {
  let inFlight = 0;
  let paused = false;
  from.on('message', (data: Buffer, isBinary: boolean) => {
    if (to.readyState !== WebSocket.OPEN) return;
    inFlight += data.length;
    to.send(data, { binary: isBinary }, () => {
      inFlight -= data.length;
      if (paused && inFlight <= LOW_WATER) {
        paused = false;
        from.resume();
      }
    });
    if (!paused && inFlight > HIGH_WATER) {
      paused = true;
      from.pause();
    }
  });
}

/** The relays running on this node. */
export class Relays {
  private readonly open = new Set<Relay>();
  private readonly told = new WeakSet<Relay>();
  private waiters: Array<() => void> = [];

  get size(): number {
    return this.open.size;
  }

  add(r: Relay): void {
    this.open.add(r);
    void r.done.then(() => {
      this.open.delete(r);
      if (this.open.size > 0) return;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  list(): Relay[] {
    return [...this.open];
  }

  /** Hand every relay not told yet over (drain); `message` gives the close text for each. Returns how many. */
  handOver(message: (r: Relay) => string): number {
    let n = 0;
    for (const r of this.open) {
      if (this.told.has(r)) continue;
      this.told.add(r);
      r.handOver(message(r));
      n++;
    }
    return n;
  }

  closeAll(code: number, message: string): void {
    for (const r of this.open) r.close(code, message);
  }

  whenEmpty(): Promise<void> {
    if (this.open.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
