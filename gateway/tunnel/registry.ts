/**
 * The open tunnels of this node: for graceful shutdown, for metrics, and (session-continuity
 * issue) for ending every tunnel to a VM whose owner changed.
 */
import type { Protocol } from '../directory/directory.js';
import type { CloseReason, Pump } from './pump.js';
import type { Transport } from './request.js';

export type { Transport };

export interface Tunnel {
  /** `<node>:<n>`: unique in the cluster (node ids are), so an admin can name it on any node. */
  readonly id: string;
  readonly vm: string;
  readonly protocol: Protocol;
  readonly transport: Transport;
  readonly user: string;
  readonly sessionId: string;
  readonly client: string;
  readonly startedAt: number;
  /** The VM's owner and epoch when the tunnel opened: a change of owner reroutes it. */
  readonly node: string;
  readonly epoch: number;
  /** When the session's maximum session time ends it (ms); undefined: no limit. */
  readonly expiresAt?: number | undefined;
  readonly pump: Pump;
}

export class TunnelRegistry {
  private readonly tunnels = new Set<Tunnel>();
  private waiters: Array<() => void> = [];
  private next = 1;

  /** @param node this node's id: the prefix of the tunnel ids minted here. */
  constructor(readonly node = 'local') {}

  /** A new tunnel id, `<node>:<n>`. */
  nextId(): string {
    return `${this.node}:${this.next++}`;
  }

  get size(): number {
    return this.tunnels.size;
  }

  add(t: Tunnel): void {
    this.tunnels.add(t);
  }

  delete(t: Tunnel): void {
    this.tunnels.delete(t);
    if (this.tunnels.size === 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  list(): Tunnel[] {
    return [...this.tunnels];
  }

  byVm(vm: string): Tunnel[] {
    return this.list().filter((t) => t.vm === vm);
  }

  byUser(user: string): Tunnel[] {
    return this.list().filter((t) => t.user === user);
  }

  get(id: string): Tunnel | undefined {
    for (const t of this.tunnels) if (t.id === id) return t;
    return undefined;
  }

  /** The VMs that have at least one tunnel here. */
  vms(): Set<string> {
    return new Set(this.list().map((t) => t.vm));
  }

  closeAll(reason: CloseReason): void {
    for (const t of this.list()) t.pump.close(reason);
  }

  /** Resolves when no tunnel is open (at once if none is). */
  whenEmpty(): Promise<void> {
    if (this.tunnels.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
