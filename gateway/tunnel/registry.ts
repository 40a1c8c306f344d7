/**
 * The open tunnels of this node: for graceful shutdown, for metrics, and (session-continuity
 * issue) for ending every tunnel to a VM whose owner changed.
 */
import type { Protocol } from '../directory/directory.js';
import type { CloseReason, Pump } from './pump.js';
import type { Transport } from './request.js';
import { once } from '../once.js';

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
  /** The API session (portal login) behind the tunnel's credential, if any. */
  readonly apiSession?: string | undefined;
}

/** A live tunnel as the admin API lists it (GET /api/sessions). */
export interface TunnelSummary {
  readonly id: string;
  readonly user: string;
  readonly vm: string;
  readonly protocol: Protocol;
  readonly transport: Transport;
  /** The node holding the client's side (where the tunnel is registered). */
  readonly entryNode: string;
  /** The node that owned the VM's console when the tunnel opened. */
  readonly consoleNode: string;
  readonly client: string;
  /** ISO time the tunnel opened. */
  readonly since: string;
  readonly bytesToConsole: number;
  readonly bytesToClient: number;
  /** The console session: a SPICE client's channels share it. */
  readonly session: string;
  /** A `oneport.v1` session whose client leg is away. */
  readonly parked: boolean;
  /** ISO time the maximum session time ends it, if one applies. */
  readonly expiresAt?: string;
}

export function summarize(t: Tunnel, entryNode: string): TunnelSummary {
  return {
    id: t.id,
    user: t.user,
    vm: t.vm,
    protocol: t.protocol,
    transport: t.transport,
    entryNode,
    consoleNode: t.node,
    client: t.client,
    since: new Date(t.startedAt).toISOString(),
    bytesToConsole: t.pump.bytesToConsole,
    bytesToClient: t.pump.bytesToClient,
    session: t.sessionId,
    parked: t.pump.parked,
    ...(t.expiresAt !== undefined ? { expiresAt: new Date(t.expiresAt).toISOString() } : {}),
  };
}

export class TunnelRegistry {
  /** By id: ids are minted here (nextId), one per tunnel. */
  private readonly tunnels = new Map<string, Tunnel>();
  /**
   * The same tunnels by VM and by user: a directory change (a VM moved or changed, a user changed)
   * finds its tunnels in O(theirs). A failover of 10,000 VMs is 10,000 changes on every node; with
   * 20,000 tunnels held, a scan each was 2 x 10^8 steps on each event loop.
   */
  private readonly vmIndex = new Map<string, Set<Tunnel>>();
  private readonly userIndex = new Map<string, Set<Tunnel>>();
  /** Tunnels being set up (openTunnel: authorized, held, dialling...), not yet added or refused. */
  private setups = 0;
  private waiters: Array<{ idle: boolean; resolve: () => void }> = [];
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

  /** Tunnels being set up now. */
  get settingUp(): number {
    return this.setups;
  }

  add(t: Tunnel): void {
    this.tunnels.set(t.id, t);
    index(this.vmIndex, t.vm, t);
    index(this.userIndex, t.user, t);
  }

  delete(t: Tunnel): void {
    if (this.tunnels.get(t.id) === t) {
      this.tunnels.delete(t.id);
      unindex(this.vmIndex, t.vm, t);
      unindex(this.userIndex, t.user, t);
    }
    this.wake();
  }

  /**
   * A tunnel's setup begins (openTunnel); call the result once it ends, added or refused. A drain
   * waits for setups too (whenIdle): a tunnel set up after the last one ended is told, not cut.
   */
  settingUpOne(): () => void {
    this.setups++;
    return once(() => {
      this.setups--;
      this.wake();
    });
  }

  list(): Tunnel[] {
    return [...this.tunnels.values()];
  }

  /**
   * The tunnels clients hold here (of `user` only, if named): a hop is the owner's side of a
   * tunnel another node lists (and ends: closing the entry's side closes the hop).
   */
  clientTunnels(user?: string): Tunnel[] {
    return (user === undefined ? this.list() : this.byUser(user)).filter((t) => t.transport !== 'hop');
  }

  /** The tunnel `id` if a client holds it here (not a hop: see clientTunnels). */
  clientTunnel(id: string): Tunnel | undefined {
    const t = this.get(id);
    return t?.transport === 'hop' ? undefined : t;
  }

  byVm(vm: string): Tunnel[] {
    return [...(this.vmIndex.get(vm) ?? [])];
  }

  byUser(user: string): Tunnel[] {
    return [...(this.userIndex.get(user) ?? [])];
  }

  get(id: string): Tunnel | undefined {
    return this.tunnels.get(id);
  }

  /** The VMs that have at least one tunnel here. */
  vms(): Set<string> {
    return new Set(this.vmIndex.keys());
  }

  closeAll(reason: CloseReason): void {
    for (const t of this.list()) t.pump.close(reason);
  }

  /** Resolves when no tunnel is open (at once if none is). */
  whenEmpty(): Promise<void> {
    return this.when(false);
  }

  /** Resolves when no tunnel is open and none is being set up. */
  whenIdle(): Promise<void> {
    return this.when(true);
  }

  private when(idle: boolean): Promise<void> {
    if (this.reached(idle)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ idle, resolve }));
  }

  private reached(idle: boolean): boolean {
    return this.tunnels.size === 0 && (!idle || this.setups === 0);
  }

  private wake(): void {
    if (this.tunnels.size > 0) return;
    const ready = this.waiters.filter((w) => this.reached(w.idle));
    this.waiters = this.waiters.filter((w) => !this.reached(w.idle));
    for (const w of ready) w.resolve();
  }
}

function index(m: Map<string, Set<Tunnel>>, key: string, t: Tunnel): void {
  const set = m.get(key);
  if (set) set.add(t);
  else m.set(key, new Set([t]));
}

function unindex(m: Map<string, Set<Tunnel>>, key: string, t: Tunnel): void {
  const set = m.get(key);
  if (!set) return;
  set.delete(t);
  if (set.size === 0) m.delete(key);
}
