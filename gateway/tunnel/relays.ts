/**
 * The `oneport.v1` legs this node relays to the node holding their session (cluster/relay.ts):
 * message for message, with backpressure, and no session state here. A drain (drain.ts) hands
 * them over: the client is told 4001 `{"resume":true}` and the holder's side is cut as a dropped
 * leg (not a clean close), so the holder parks the session and the client resumes it through
 * another node; the console notices nothing. No socket is opened here: the set and the splice.
 */
import { WebSocket } from 'ws';
import { closeWebSocket } from './close.js';
import { once } from '../once.js';

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
  /** The VM's owner and epoch when the relay opened: a change ends it (4001), as a tunnel (reroute.ts). */
  readonly vmAt?: { readonly node: string; readonly epoch: number } | undefined;
}

/** Bytes sent on one side and not yet flushed above which the other side stops being read. */
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

/** Close codes a peer cannot send on the wire: a leg that just dropped is told 1011. */
const sendable = (c: number): number => (c === 1005 || c === 1006 || c === 1015 ? 1011 : c);

/** How a relay ended, for its log line. */
export type RelayEnd = 'closed' | 'handed-over' | 'rerouted' | 'holder-gone' | 'dropped';

export interface RelayOptions {
  /** The VM's owner and epoch when it opened (undefined: not known, never rerouted from here). */
  readonly vmAt?: { readonly node: string; readonly epoch: number } | undefined;
  /**
   * The holder's side dropped without a close: is the holder still there (it parked the session:
   * the client resumes) or gone with the session (4001 `goneMessage`: reconnect fresh)? A killed
   * process's sockets drop the same way as a network fault, so this asks the holder.
   */
  readonly holderAlive?: () => Promise<boolean>;
  readonly goneMessage?: () => string;
}

export class Relay {
  private handedOver = false;
  /** Why it ended, once it did (or is ending). */
  end: RelayEnd | undefined;
  readonly done: Promise<RelayEnd>;
  private markDone!: (end: RelayEnd) => void;
  readonly vmAt: RelayOptions['vmAt'];

  constructor(
    readonly client: WebSocket,
    readonly upstream: WebSocket,
    /** The node holding the session. */
    readonly holder: string,
    readonly vm: string,
    opts: RelayOptions = {},
  ) {
    this.vmAt = opts.vmAt;
    this.done = new Promise((r) => (this.markDone = r));
    const finish = (): void => {
      if (client.readyState === WebSocket.CLOSED && upstream.readyState === WebSocket.CLOSED) this.markDone(this.end ?? 'closed');
    };
    forward(client, upstream);
    forward(upstream, client);
    upstream.on('close', (code: number, reason: Buffer) => {
      if (this.handedOver || client.readyState !== WebSocket.OPEN) return finish();
      if (code !== 1006 || !opts.holderAlive) {
        closeWebSocket(client, sendable(code), reason.toString());
        return finish();
      }
      void opts.holderAlive().then(
        (alive) => {
          this.end ??= alive ? 'dropped' : 'holder-gone';
          if (alive) closeWebSocket(client, 1011, 'relay dropped');
          else closeWebSocket(client, 4001, opts.goneMessage?.() ?? '{"retryMs":0}');
        },
        () => closeWebSocket(client, 1011, 'relay dropped'),
      );
    });
    client.on('close', finish);
    // The client's leg dropping must look the same to the holder: not a clean 1000 unless it was.
    client.on('close', (code: number) => {
      if (!this.handedOver && (code === 1000 || code === 1001)) upstream.close(code);
      else upstream.terminate();
    });
    upstream.on('close', finish);
  }

  /**
   * Send the client elsewhere with its session kept: 4001 with `message` (which says `resume`),
   * and the holder's side cut like a dropped leg, so the holder parks the session for it.
   */
  handOver(message: string): void {
    if (this.handedOver) return;
    this.handedOver = true;
    this.end ??= 'handed-over';
    closeWebSocket(this.client, 4001, message);
    this.upstream.terminate();
  }

  /** End it with `code` (a reroute, a stop that cannot hand over); the holder ends or parks the session as the code says. */
  close(code: number, message: string, end: RelayEnd = 'closed'): void {
    this.end ??= end;
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
  /** Relays being opened (the holder not answered yet): a drain waits for them too, then hands them over. */
  private opening = 0;

  /** Relays open, and being opened. */
  get size(): number {
    return this.open.size + this.opening;
  }

  /** A relay is being opened; call the function returned once it is added or given up. */
  opened(): () => void {
    this.opening++;
    return once(() => {
      this.opening--;
      this.wake();
    });
  }

  add(r: Relay): void {
    this.open.add(r);
    void r.done.then(() => {
      this.open.delete(r);
      this.wake();
    });
  }

  private wake(): void {
    if (this.size > 0) return;
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
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

  /**
   * The VM changed owner (or epoch): its console restarted, so the session ends (DECISIONS
   * 2026-12-03), as reroute.ts ends tunnels. The holder does the same for its side when it is
   * alive; this covers one that is not (hung, partitioned), whose relays would otherwise sit on a
   * silent connection. Returns how many.
   */
  rerouteMoved(vm: string, now: { readonly node: string; readonly epoch: number } | undefined, message: string): number {
    let n = 0;
    for (const r of this.open) {
      if (r.vm !== vm || r.vmAt === undefined || now === undefined) continue;
      if (now.node === r.vmAt.node && now.epoch === r.vmAt.epoch) continue;
      r.close(4001, message, 'rerouted');
      n++;
    }
    return n;
  }

  closeAll(code: number, message: string): void {
    for (const r of this.open) r.close(code, message);
  }

  whenEmpty(): Promise<void> {
    if (this.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
