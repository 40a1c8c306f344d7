/**
 * One directory listener for every held client: waiters register per VM and wake on that VM's
 * change, on a resync (anything may have changed), on their own deadline or on abort. However
 * many clients a failover holds, the directory emitter carries exactly one listener of each kind.
 */
import type { EventEmitter } from 'node:events';

interface Waiter {
  readonly wake: () => void;
}

export class VmWatcher {
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly onChange = (c: { kind: string; name?: string }): void => {
    if (c.kind === 'vm' && c.name !== undefined) this.wakeVm(c.name);
  };
  private readonly onResync = (): void => {
    for (const name of [...this.waiters.keys()]) this.wakeVm(name);
  };

  constructor(private readonly dir: EventEmitter) {
    dir.on('change', this.onChange);
    dir.on('resync', this.onResync);
  }

  /** Clients waiting right now (for tests and metrics). */
  get size(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }

  /** Resolves on the next change to `vm`, after `ms`, or on abort; whichever comes first. Never rejects. */
  next(vm: string, ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) {
        resolve();
        return;
      }
      let set = this.waiters.get(vm);
      if (!set) this.waiters.set(vm, (set = new Set()));
      const waiters = set;
      const waiter: Waiter = {
        wake: () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', waiter.wake);
          waiters.delete(waiter);
          if (waiters.size === 0 && this.waiters.get(vm) === waiters) this.waiters.delete(vm);
          resolve();
        },
      };
      const timer = setTimeout(waiter.wake, ms);
      waiters.add(waiter);
      signal?.addEventListener('abort', waiter.wake, { once: true });
    });
  }

  private wakeVm(name: string): void {
    const set = this.waiters.get(name);
    if (!set) return;
    for (const w of [...set]) w.wake();
  }

  close(): void {
    this.dir.removeListener('change', this.onChange);
    this.dir.removeListener('resync', this.onResync);
    for (const name of [...this.waiters.keys()]) this.wakeVm(name);
  }
}
