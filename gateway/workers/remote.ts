/**
 * What a worker uses in place of the node-wide state the primary holds (README "Workers"): thin
 * clients over IPC (ipc.ts) implementing the interfaces the single process uses, so the logic
 * behind them is the same code (MemoryDirectory, MemoryAuthStore, AttemptLimiter,
 * ConnectionCounts) running once, in the primary.
 *
 * - WorkerDirectory: the embedded directory, read from a replica in this process (the data path
 *   never waits on IPC); writes go to the primary, which saves them and sends every change to
 *   every worker before it answers the write, so a writer reads its own write.
 * - RemoteAuthStore: ticket redemption and session revocation, answered by the primary's store:
 *   a ticket is spent once per node, whichever worker the connection landed on.
 * - RemoteLimiter: the login and ticket budgets, counted in the primary.
 * - RemoteSessionCounter: console sessions per user and per VM (session caps), counted in the
 *   primary over every worker (a session part of which another worker holds is admitted).
 * - RemoteCounts: connections per client address. The primary admits and counts each connection
 *   at accept, before it hands it to a worker; a worker tells it when one ends, asks it when a
 *   PROXY header names another client, and makes a parked session hold a count.
 */
import type { AuthStore, Redemption, TicketRecord, TicketReuse } from '../auth/store.js';
import type { Directory, DirectoryChange, KeyRing, PutVmOptions, UserRecord, VmRecord } from '../directory/directory.js';
import { DirectoryView } from '../directory/view.js';
import { type Admission, ConnectionCounts, type Refusal, holdCount } from '../admission.js';
import type { Limiter } from '../auth/limits.js';
import type { Rpc } from './ipc.js';
import { type CapScope, type CountedSession, type SessionCounter, SessionTally } from '../tunnel/session-caps.js';
import type { SessionCapValues } from '../tunnel/policy.js';

/** The whole embedded directory, as the primary sends it to a starting worker. */
export interface DirectorySnapshot {
  readonly version: number;
  readonly users: readonly UserRecord[];
  readonly vms: readonly VmRecord[];
  readonly keys: KeyRing;
}

/** One change as the primary broadcasts it: the record after it (none: deleted). */
export interface ChangeNote {
  readonly change: DirectoryChange;
  readonly record?: UserRecord | VmRecord | KeyRing;
}

export class WorkerDirectory extends DirectoryView implements Directory {
  readonly kind = 'embedded' as const;

  constructor(
    private readonly rpc: Rpc,
    snapshot: DirectorySnapshot,
  ) {
    super(snapshot.keys);
    for (const u of snapshot.users) this.users.set(u.name, Object.freeze(u));
    for (const v of snapshot.vms) this.vms.set(v.name, Object.freeze(v));
    this.ver = snapshot.version;
  }

  /** A change the primary saved: applied here, then announced like the primary's own. */
  apply(note: ChangeNote): void {
    const c = note.change;
    if (c.version <= this.ver) return;
    if (c.kind === 'keys') this.keyRing = note.record as KeyRing;
    else if (c.kind === 'user') {
      if (note.record === undefined) this.users.delete(c.name);
      else this.users.set(c.name, Object.freeze(note.record as UserRecord));
    } else if (note.record === undefined) this.vms.delete(c.name);
    else this.vms.set(c.name, Object.freeze(note.record as VmRecord));
    this.ver = c.version;
    this.emit('change', c);
  }

  async putUser(user: UserRecord): Promise<void> {
    await this.write('putUser', [user]);
  }
  async deleteUser(name: string): Promise<boolean> {
    return this.write('deleteUser', [name]);
  }
  async putVm(vm: VmRecord, opts?: PutVmOptions): Promise<boolean> {
    return this.write('putVm', [vm, opts ?? {}]);
  }
  async putVms(vms: readonly VmRecord[], ifEpochs: readonly number[]): Promise<boolean[]> {
    return this.write('putVms', [vms, ifEpochs]);
  }
  async deleteVm(name: string): Promise<boolean> {
    return this.write('deleteVm', [name]);
  }
  async rotateKeys(): Promise<void> {
    await this.write('rotateKeys', []);
  }
  async close(): Promise<void> {
    this.removeAllListeners();
  }

  private write<T>(op: DirectoryWrite, args: unknown[]): Promise<T> {
    return this.rpc.call<T>('dir', { op, args });
  }
}

export const DIRECTORY_WRITES = ['putUser', 'deleteUser', 'putVm', 'putVms', 'deleteVm', 'rotateKeys'] as const;
export type DirectoryWrite = (typeof DIRECTORY_WRITES)[number];

export class RemoteAuthStore implements AuthStore {
  constructor(private readonly rpc: Rpc) {}

  async putTicket(record: TicketRecord): Promise<void> {
    await this.rpc.call('store', { op: 'putTicket', args: [record] });
  }
  redeemTicket(id: string, client: string, now: number, newSessionId: string, reuse: TicketReuse): Promise<Redemption> {
    return this.rpc.call('store', { op: 'redeemTicket', args: [id, client, now, newSessionId, reuse] });
  }
  async releaseTicket(id: string, now: number): Promise<void> {
    // Never rejects, like the memory store's.
    this.rpc.note('store', { op: 'releaseTicket', args: [id, now] });
  }
  async revokeSession(sessionId: string, until: number): Promise<void> {
    await this.rpc.call('store', { op: 'revokeSession', args: [sessionId, until] });
  }
  async isSessionRevoked(sessionId: string): Promise<boolean> {
    return this.rpc.call('store', { op: 'isSessionRevoked', args: [sessionId] });
  }
  async close(): Promise<void> {
    // The primary's store is the primary's to close.
  }
}

export const STORE_OPS = ['putTicket', 'redeemTicket', 'releaseTicket', 'revokeSession', 'isSessionRevoked'] as const;

export class RemoteLimiter implements Limiter {
  constructor(
    private readonly rpc: Rpc,
    private readonly name: string,
    readonly points: number,
  ) {}

  private op(op: 'check' | 'count' | 'take' | 'refund' | 'reset', key: string): Promise<void> {
    return this.rpc.call('limit', { name: this.name, points: this.points, op, key });
  }
  async check(key: string): Promise<void> {
    await this.op('check', key);
  }
  async count(key: string): Promise<void> {
    await this.op('count', key);
  }
  async take(key: string): Promise<void> {
    await this.op('take', key);
  }
  async refund(key: string): Promise<void> {
    await this.op('refund', key);
  }
  async reset(key: string): Promise<void> {
    await this.op('reset', key);
  }
}

export class RemoteCounts implements Admission {
  /** What this worker counted, for its own probes (the node-wide counts are the primary's). */
  private readonly mine = new ConnectionCounts({ maxConnections: Infinity, maxConnectionsPerAddress: Infinity });

  constructor(private readonly rpc: Rpc) {}

  get total(): number {
    return this.mine.total;
  }
  holding(key: string): number {
    return this.mine.holding(key);
  }

  admit(key: string): Promise<Refusal | undefined> {
    return this.rpc.call<Refusal | null>('admit', { key }).then(
      (r) => {
        if (r === null) this.mine.add(key);
        return r ?? undefined;
      },
      // No answer from the primary (it is stopping): refuse, as a full port would.
      () => 'fair-share' as const,
    );
  }
  /** Counted by the primary at accept, before the socket was passed here. */
  adopted(key: string): void {
    this.mine.add(key);
  }
  add(key: string): void {
    this.mine.add(key);
    this.rpc.note('add', { key });
  }
  remove(key: string): void {
    this.mine.remove(key);
    this.rpc.note('release', { key });
  }
  hold(key: string): () => void {
    return holdCount(this, key);
  }
}

export class RemoteSessionCounter implements SessionCounter {
  /** Sessions the primary counted for this worker: only those are released there (no message per uncapped tunnel). */
  private readonly counted = new Set<string>();

  constructor(private readonly rpc: Rpc) {}

  async admit(s: CountedSession, caps: SessionCapValues): Promise<'ok' | CapScope> {
    const verdict = await this.rpc.call<'ok' | CapScope>('session-admit', { session: s, caps });
    if (verdict === 'ok') this.counted.add(s.id);
    return verdict;
  }
  release(s: CountedSession): void {
    if (this.counted.delete(s.id)) this.rpc.note('session-release', { id: s.id });
  }
  start(): void {
    // The primary forgets a worker's sessions when it dies: nothing to keep alive.
  }
  stop(): void {}
}

/**
 * The primary's side: every worker's counted sessions, by id, with the workers holding a part.
 * Same rule as one process (session-caps.ts SessionTally), over the whole node.
 */
export class NodeSessionCounts {
  private readonly sessions = new Map<string, { session: CountedSession; holders: Set<number> }>();
  private readonly tally = new SessionTally();

  admit(worker: number, s: CountedSession, caps: SessionCapValues): 'ok' | CapScope {
    const known = this.sessions.get(s.id);
    if (known) {
      known.holders.add(worker);
      return 'ok';
    }
    const full = this.tally.full(s, caps);
    if (full) return full;
    const session = { id: s.id, user: s.user, vm: s.vm };
    this.sessions.set(s.id, { session, holders: new Set([worker]) });
    this.tally.add(session);
    return 'ok';
  }

  release(worker: number, id: string): void {
    const known = this.sessions.get(id);
    if (!known) return;
    known.holders.delete(worker);
    if (known.holders.size > 0) return;
    this.sessions.delete(id);
    this.tally.remove(known.session);
  }

  /** A worker died: what it held is no longer held there. */
  forget(worker: number): void {
    for (const id of [...this.sessions.keys()]) this.release(worker, id);
  }
}
