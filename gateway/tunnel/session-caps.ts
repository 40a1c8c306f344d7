/**
 * Concurrent console sessions per user and per VM (security issue, "Session controls"). A session
 * is what the tunnel's `sessionId` names: a SPICE client's channels of one ticket and reconnects
 * with its resume token are one session; a new ticket, a password or a portal cookie opens a new
 * one. The broker acquires a slot before it reaches the console and releases it when the tunnel
 * ends (or fails to open).
 *
 * This node's sessions are held here, with how many of its tunnels (or tunnels being opened) each
 * has. The first tunnel of a session asks to be admitted: on one node by counting what is held
 * here; in a cluster through a `SessionCounter` (cluster/session-counts.ts: Redis, atomic, so two
 * nodes cannot both take the last slot). Further tunnels of a session held here join it without
 * asking. A session's start here is also where its maximum session time counts from.
 *
 * When Redis cannot answer, sessions are admitted uncounted (counted in a metric and a log line):
 * caps are a resource control, and while Redis is away existing sessions and resume tokens keep
 * working (DECISIONS 2026-12-03); the heartbeat's refresh counts them once Redis is back.
 */
import type { Directory } from '../directory/directory.js';
import { OneportError } from '../errors.js';
import type { Logger, RateLimitedLog } from '../log.js';
import type { Metrics } from '../metrics.js';
import { type CapDefaults, type SessionCapValues, sessionCaps } from './policy.js';
import type { TunnelTarget } from './request.js';
import { once } from '../once.js';

export interface CountedSession {
  readonly id: string;
  readonly user: string;
  readonly vm: string;
}

/** What a cap refusal names: the user's cap or the VM's. */
export type CapScope = 'user' | 'vm';

/** Cluster-wide counting of sessions (cluster/session-counts.ts). */
export interface SessionCounter {
  /**
   * Atomically: count `s` under the caps that apply (> 0), unless one is full. A session another
   * node already counts (part of it is held there) is admitted whatever the count.
   */
  admit(s: CountedSession, caps: SessionCapValues): Promise<'ok' | CapScope>;
  /** This node holds no tunnel of `s` any more. */
  release(s: CountedSession): void;
  /** Keep the counts of what `held` lists alive until `stop` (a crashed node's counts expire). */
  start(held: () => Iterable<{ readonly session: CountedSession; readonly caps: SessionCapValues }>): void;
  stop(): void;
}

export interface SessionSlot {
  /** When this node first held the session (ms). */
  readonly startedAt: number;
  /** Idempotent. */
  release(): void;
}

interface Held {
  readonly session: CountedSession;
  readonly startedAt: number;
  refs: number;
  /** Settles when the session's admission does; rejects with the refusal. */
  admission: Promise<void>;
  admitted: boolean;
}

export interface SessionCapsDeps {
  readonly dir: Directory;
  readonly defaults: CapDefaults;
  /** Set in a cluster; without one, what is held here is the whole count. */
  readonly counter?: SessionCounter | undefined;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly noisyLog: RateLimitedLog;
}

const NO_SLOT_RELEASE = (): void => undefined;

/**
 * Sessions counted by user and by VM: the rule without a cluster (a new session is refused when its
 * user, or its VM, already has as many as its cap) in O(1). Used by SessionCaps on one node and by
 * a primary for its workers (workers/remote.ts NodeSessionCounts). Counting by a scan of every
 * session held cost each new session O(sessions): ~20,000 steps at 20,000 tunnels.
 */
export class SessionTally {
  private readonly users = new Map<string, number>();
  private readonly vms = new Map<string, number>();

  /** The cap `s` would go over as a new session, if any. */
  full(s: CountedSession, caps: SessionCapValues): CapScope | undefined {
    if (caps.user > 0 && (this.users.get(s.user) ?? 0) >= caps.user) return 'user';
    if (caps.vm > 0 && (this.vms.get(s.vm) ?? 0) >= caps.vm) return 'vm';
    return undefined;
  }

  add(s: CountedSession): void {
    bump(this.users, s.user, 1);
    bump(this.vms, s.vm, 1);
  }

  remove(s: CountedSession): void {
    bump(this.users, s.user, -1);
    bump(this.vms, s.vm, -1);
  }
}

function bump(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n > 0) m.set(key, n);
  else m.delete(key);
}

export class SessionCaps {
  private readonly held = new Map<string, Held>();
  /** The sessions in `held`, by user and VM: the count on one node. In a cluster the counter counts. */
  private readonly tally: SessionTally | undefined;

  constructor(private readonly deps: SessionCapsDeps) {
    this.tally = deps.counter ? undefined : new SessionTally();
    deps.counter?.start(() => this.counted());
  }

  /** Sessions held here, by id. */
  get size(): number {
    return this.held.size;
  }

  /**
   * A slot for one tunnel of `target`'s session; throws ONEPORT_ERR_SESSION_LIMIT when a new
   * session would go over a cap. A hop is the owner's side of a session its entry node counts.
   */
  async acquire(target: TunnelTarget): Promise<SessionSlot> {
    if (target.via === 'hop') return { startedAt: Date.now(), release: NO_SLOT_RELEASE };
    const id = target.sessionId;
    const joined = this.held.get(id);
    if (joined) {
      joined.refs++;
      try {
        await joined.admission;
      } catch (e) {
        joined.refs--;
        throw e;
      }
      return this.slot(joined);
    }
    const session: CountedSession = { id, user: target.user.name, vm: target.vm.name };
    const caps = sessionCaps(target.vm, target.user, this.deps.defaults);
    const h: Held = { session, startedAt: Date.now(), refs: 1, admission: Promise.resolve(), admitted: false };
    if (this.tally) {
      // One node: what is held here is the count, and this runs without a pause in between.
      const full = this.tally.full(session, caps);
      if (full) this.refuse(full, session, caps);
      h.admitted = true;
      this.hold(h);
      return this.slot(h);
    }
    this.hold(h);
    h.admission = caps.user > 0 || caps.vm > 0 ? this.admitCounted(h, caps) : Promise.resolve();
    try {
      await h.admission;
    } catch (e) {
      this.unhold(h);
      throw e;
    }
    h.admitted = true;
    return this.slot(h);
  }

  private async admitCounted(h: Held, caps: SessionCapValues): Promise<void> {
    let verdict: 'ok' | CapScope;
    try {
      verdict = await this.deps.counter!.admit(h.session, caps);
    } catch (err) {
      this.deps.metrics.sessionCapUnchecked.inc();
      if (this.deps.noisyLog.take('session-caps:unchecked') >= 0) {
        this.deps.log.warn({ event: 'session-caps-unchecked', user: h.session.user, vm: h.session.vm, err: (err as Error).message }, 'session caps could not be checked (Redis): admitted uncounted');
      }
      return;
    }
    if (verdict !== 'ok') this.refuse(verdict, h.session, caps);
  }

  private hold(h: Held): void {
    this.held.set(h.session.id, h);
    this.tally?.add(h.session);
  }

  /** Forget `h` if it is still the session held under its id. */
  private unhold(h: Held): void {
    if (this.held.get(h.session.id) !== h) return;
    this.held.delete(h.session.id);
    this.tally?.remove(h.session);
  }

  private refuse(scope: CapScope, s: CountedSession, caps: SessionCapValues): never {
    this.deps.metrics.sessionCapRefusals.inc({ scope });
    const message =
      scope === 'user'
        ? `${s.user} already has ${caps.user} console session(s) open, the most allowed; close one first`
        : `${s.vm} already has ${caps.vm} console session(s) open, the most allowed`;
    throw new OneportError('ONEPORT_ERR_SESSION_LIMIT', message);
  }

  private slot(h: Held): SessionSlot {
    return {
      startedAt: h.startedAt,
      release: once(() => {
        if (--h.refs > 0 || this.held.get(h.session.id) !== h) return;
        this.unhold(h);
        this.deps.counter?.release(h.session);
      }),
    };
  }

  /** The admitted sessions held here, with the caps the directory gives them now. */
  private *counted(): Iterable<{ session: CountedSession; caps: SessionCapValues }> {
    for (const h of this.held.values()) {
      if (!h.admitted) continue;
      const vm = this.deps.dir.getVm(h.session.vm);
      const user = this.deps.dir.getUser(h.session.user);
      if (vm && user) yield { session: h.session, caps: sessionCaps(vm, user, this.deps.defaults) };
    }
  }

  close(): void {
    this.deps.counter?.stop();
  }
}
