/**
 * The legacy RD Gateway pair (MS-TSGU 3.3.5.1): the client's `RDG_OUT_DATA` (answered 200 and
 * kept open: the gateway's packets flow down it) and its `RDG_IN_DATA` (the client's packets flow
 * up its chunked body) are two connections joined by their `RDG-Connection-Id`. An OUT waits here
 * for its IN, for at most the pairing deadline; an IN that comes first waits for its OUT as long.
 * Both count against one cap on unpaired halves, so a client that opens halves and never
 * completes them holds a bounded number of slots for a bounded time.
 *
 * A half is taken only by a request from the same client address (IPv6: the same /64): a stranger
 * who learnt a connection id cannot join someone else's pair.
 */
import type { Duplex } from 'node:stream';
import { addressKey } from '../address.js';

export interface OutHalf {
  readonly socket: Duplex;
  readonly client: string;
  readonly acceptedAt: bigint;
}

interface Parked {
  readonly half: OutHalf;
  readonly timer: NodeJS.Timeout;
}

interface Waiter {
  readonly client: string;
  readonly give: (half: OutHalf | undefined) => void;
}

export type ParkResult = 'parked' | 'full' | 'duplicate';

export class LegacyPairs {
  private readonly outs = new Map<string, Parked>();
  private readonly waiters = new Map<string, Waiter>();

  constructor(private readonly opts: { readonly maxUnpaired: number; readonly pairTimeoutMs: number }) {}

  /** Is an OUT half for `id` parked here? */
  has(id: string): boolean {
    return this.outs.has(id);
  }

  /** Halves waiting for their other half. */
  get unpaired(): number {
    return this.outs.size + this.waiters.size;
  }

  /**
   * An OUT half: handed to an IN already waiting for it, else kept until its IN takes it or the
   * deadline passes (then `expired` runs and the half is forgotten).
   */
  park(id: string, half: OutHalf, expired: () => void): ParkResult {
    if (this.outs.has(id)) return 'duplicate';
    const waiter = this.waiters.get(id);
    if (waiter && addressKey(waiter.client) === addressKey(half.client)) {
      this.waiters.delete(id);
      waiter.give(half);
      return 'parked';
    }
    if (this.unpaired >= this.opts.maxUnpaired) return 'full';
    const timer = setTimeout(() => {
      if (this.outs.get(id)?.half !== half) return;
      this.outs.delete(id);
      expired();
    }, this.opts.pairTimeoutMs);
    timer.unref();
    this.outs.set(id, { half, timer });
    // A client that gives up on its OUT frees the slot at once.
    half.socket.once('close', () => this.drop(id, half));
    return 'parked';
  }

  /** The OUT half for `id` if one waits here for this client; it is then no longer parked. */
  take(id: string, client: string): OutHalf | undefined {
    const parked = this.outs.get(id);
    if (!parked || addressKey(parked.half.client) !== addressKey(client)) return undefined;
    this.outs.delete(id);
    clearTimeout(parked.timer);
    return parked.half;
  }

  /**
   * An IN that found no OUT: wait for one to be parked, until `signal` aborts (the deadline, or
   * the IN's client leaving). 'full' when the cap is reached, 'duplicate' when another IN waits.
   */
  wait(id: string, client: string, signal: AbortSignal): Promise<OutHalf | undefined> | ParkResult {
    if (this.waiters.has(id)) return 'duplicate';
    if (this.unpaired >= this.opts.maxUnpaired) return 'full';
    return new Promise((resolve) => {
      const give = (half: OutHalf | undefined): void => {
        signal.removeEventListener('abort', onAbort);
        resolve(half);
      };
      const onAbort = (): void => {
        if (this.waiters.get(id)?.give === give) this.waiters.delete(id);
        give(undefined);
      };
      this.waiters.set(id, { client, give });
      signal.addEventListener('abort', onAbort, { once: true });
      if (signal.aborted) onAbort();
    });
  }

  private drop(id: string, half: OutHalf): void {
    const parked = this.outs.get(id);
    if (parked?.half !== half) return;
    clearTimeout(parked.timer);
    this.outs.delete(id);
  }
}
