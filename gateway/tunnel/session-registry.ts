/**
 * This node's resumable (`oneport.v1`) sessions by id, and the caps that keep them bounded
 * (security issue 2; README "Transparent resume"). In a cluster each session is also recorded in
 * Redis (which node holds it), so a client that comes back through another node is relayed here.
 *
 * A session costs its console connection and its replay bytes, whether its client is connected
 * (live) or not (parked). The caps, all per node (config `tunnel.resume`):
 *
 *   sessions-per-user  a user's live and parked sessions; a new one beyond it ends the user's
 *                      oldest parked session, or is refused when none is parked
 *   parked-per-user    a user's parked sessions; parking one more ends the user's oldest parked one
 *   parked             parked sessions in all; parking one more ends the oldest parked session of
 *                      the user holding the most (so whoever parks most pays first)
 *   buffered-bytes     replay bytes in all; over it, parked sessions end, most bytes first; while
 *                      still over, new sessions are refused and live ones keep a small window
 *                      (`overBudget`, see session.ts)
 *
 * Parked sessions give way first: nothing is on the other end to notice but a client that may
 * never come back, and one that does gets 4001 "reconnect fresh". A parked session also holds a
 * connection count for the address that parked it (admission.ts), released when it resumes or
 * ends. No socket, no timer here: the rules are tested alone with fake sessions.
 */
import { addressKey } from '../address.js';
import type { CloseReason } from './pump.js';

export type SessionCap = 'sessions-per-user' | 'parked-per-user' | 'parked' | 'buffered-bytes';

export interface ResumeCaps {
  readonly maxSessionsPerUser: number;
  readonly maxParkedPerUser: number;
  readonly maxParked: number;
  readonly maxBufferedBytes: number;
}

export interface SessionOwner {
  readonly id: string;
  readonly user: string;
  readonly vm: string;
  readonly protocol: string;
}

/** What the registry needs of a session: a ResumableSession, or a fake in unit tests. */
export interface HeldSession {
  readonly owner: SessionOwner;
  readonly parked: boolean;
  readonly isEnded: boolean;
  /** Replay bytes held now. */
  readonly buffered: number;
  /** The address of the client leg attached last (for a parked session: the one that parked it). */
  readonly client: string;
  close(reason: CloseReason, message?: string): void;
}

/** What a session tells the registry, and asks it. */
export interface SessionHost<S extends HeldSession = HeldSession> {
  /** A leg attached, the session parked, or it ended. */
  update(s: S, parked: boolean): void;
  /** The session's replay bytes grew (positive) or shrank (negative) by `delta`. */
  replayChanged(delta: number): void;
  /** The node holds more replay bytes than `maxBufferedBytes`, even after parked sessions gave way. */
  readonly overBudget: boolean;
}

export interface CapEvent {
  readonly cap: SessionCap;
  /** `ended`: a parked session gave way; `refused`: a new session was not started. */
  readonly action: 'ended' | 'refused';
  readonly user: string;
  readonly session?: string;
}

export interface SessionRegistryOptions {
  /** Where sessions are recorded for the cluster. */
  readonly record?: { put(id: string, parked: boolean): void; forget(id: string): void };
  /** Unset: no caps (unit tests of other pieces). */
  readonly caps?: ResumeCaps;
  /** Counts per client address (admission.ts ConnectionCounts): a parked session holds one. */
  readonly connections?: { hold(key: string): () => void };
  /** A cap ended a session or refused one: metrics and the log. */
  readonly onCap?: (e: CapEvent) => void;
}

const UNCAPPED: ResumeCaps = { maxSessionsPerUser: Infinity, maxParkedPerUser: Infinity, maxParked: Infinity, maxBufferedBytes: Infinity };

/** The close text of a session a cap ended (its client is gone; it shows in the tunnel log line). */
const CAP_MESSAGE = (cap: SessionCap): string => JSON.stringify({ code: 'ONEPORT_ERR_RESUME_LIMIT', cap });

export class SessionRegistry<S extends HeldSession = HeldSession> implements SessionHost<S> {
  private readonly sessions = new Map<string, S>();
  private readonly byUser = new Map<string, Set<S>>();
  /** Parked sessions in the order they parked (oldest first): Map keeps insertion order. */
  private readonly parkedInOrder = new Map<string, S>();
  /** The connection count each parked session holds, by id. */
  private readonly holds = new Map<string, () => void>();
  private replayBytes = 0;
  /** Set while parked sessions are being ended for bytes: their own updates must not recurse. */
  private evicting = false;
  private readonly caps: ResumeCaps;

  constructor(private readonly opts: SessionRegistryOptions = {}) {
    this.caps = opts.caps ?? UNCAPPED;
  }

  get(id: string): S | undefined {
    return this.sessions.get(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  get parkedCount(): number {
    return this.parkedInOrder.size;
  }

  /** Replay bytes held by all sessions on this node. */
  get bufferedBytes(): number {
    return this.replayBytes;
  }

  get overBudget(): boolean {
    return this.replayBytes > this.caps.maxBufferedBytes;
  }

  /** Sessions `user` holds here, live and parked. */
  heldBy(user: string): number {
    return this.byUser.get(user)?.size ?? 0;
  }

  /**
   * The cap that will refuse a new session of `user` whatever parked sessions give way, without
   * ending anything: asked before the console is dialled. Counts what it refuses.
   */
  precheck(user: string): SessionCap | undefined {
    let cap: SessionCap | undefined;
    if (this.heldBy(user) >= this.caps.maxSessionsPerUser && this.oldestParked(user) === undefined) cap = 'sessions-per-user';
    else if (this.replayBytes - this.parkedBytes() > this.caps.maxBufferedBytes) cap = 'buffered-bytes';
    if (cap) this.opts.onCap?.({ cap, action: 'refused', user });
    return cap;
  }

  /**
   * Room for one more session of `user`, made by ending parked sessions where a cap says so; the
   * cap that refuses it otherwise (counted). Call right before the session is created.
   */
  admit(user: string): SessionCap | undefined {
    while (this.heldBy(user) >= this.caps.maxSessionsPerUser) {
      const victim = this.oldestParked(user);
      if (!victim) return this.refuse('sessions-per-user', user);
      this.end(victim, 'sessions-per-user');
    }
    if (this.replayBytes > this.caps.maxBufferedBytes) this.evictForBytes();
    if (this.replayBytes > this.caps.maxBufferedBytes) return this.refuse('buffered-bytes', user);
    return undefined;
  }

  update(s: S, parked: boolean): void {
    const id = s.owner.id;
    if (s.isEnded) {
      this.unpark(id);
      if (this.sessions.get(id) === s) {
        this.sessions.delete(id);
        const mine = this.byUser.get(s.owner.user);
        mine?.delete(s);
        if (mine?.size === 0) this.byUser.delete(s.owner.user);
        this.opts.record?.forget(id);
      }
      return;
    }
    this.sessions.set(id, s);
    let mine = this.byUser.get(s.owner.user);
    if (!mine) this.byUser.set(s.owner.user, (mine = new Set()));
    mine.add(s);
    if (!parked) {
      this.unpark(id);
      this.opts.record?.put(id, false);
      return;
    }
    if (!this.parkedInOrder.has(id)) {
      this.parkedInOrder.set(id, s);
      const hold = this.opts.connections?.hold(addressKey(s.client));
      if (hold) this.holds.set(id, hold);
    }
    this.opts.record?.put(id, true);
    this.enforceParked(s.owner.user);
  }

  replayChanged(delta: number): void {
    this.replayBytes += delta;
    if (this.replayBytes > this.caps.maxBufferedBytes && !this.evicting) this.evictForBytes();
  }

  /** After `user` parked one more: their oldest parked give way, then the node's biggest parker's. */
  private enforceParked(user: string): void {
    for (;;) {
      const mine = this.parkedOf(user);
      if (mine.length <= this.caps.maxParkedPerUser) break;
      this.end(mine[0]!, 'parked-per-user');
    }
    while (this.parkedInOrder.size > this.caps.maxParked) {
      const victim = this.oldestOfBiggestParker();
      if (!victim) break;
      this.end(victim, 'parked');
    }
  }

  /** End parked sessions, the one with the most replay bytes first, until the node is within its bytes. */
  private evictForBytes(): void {
    this.evicting = true;
    try {
      while (this.replayBytes > this.caps.maxBufferedBytes) {
        let victim: S | undefined;
        for (const s of this.parkedInOrder.values()) if (s.buffered > (victim?.buffered ?? 0)) victim = s;
        if (!victim) break;
        this.end(victim, 'buffered-bytes');
      }
    } finally {
      this.evicting = false;
    }
  }

  private end(s: S, cap: SessionCap): void {
    this.opts.onCap?.({ cap, action: 'ended', user: s.owner.user, session: s.owner.id });
    s.close('session-cap', CAP_MESSAGE(cap));
    // A session that did not report its end (a bug) must not be picked again forever.
    if (!s.isEnded) this.unpark(s.owner.id);
  }

  private refuse(cap: SessionCap, user: string): SessionCap {
    this.opts.onCap?.({ cap, action: 'refused', user });
    return cap;
  }

  private unpark(id: string): void {
    this.parkedInOrder.delete(id);
    const release = this.holds.get(id);
    this.holds.delete(id);
    release?.();
  }

  private parkedOf(user: string): S[] {
    return [...this.parkedInOrder.values()].filter((s) => s.owner.user === user);
  }

  private oldestParked(user: string): S | undefined {
    for (const s of this.parkedInOrder.values()) if (s.owner.user === user) return s;
    return undefined;
  }

  private parkedBytes(): number {
    let n = 0;
    for (const s of this.parkedInOrder.values()) n += s.buffered;
    return n;
  }

  /** The oldest parked session of the user who holds the most parked sessions (ties: the oldest overall). */
  private oldestOfBiggestParker(): S | undefined {
    const counts = new Map<string, number>();
    for (const s of this.parkedInOrder.values()) counts.set(s.owner.user, (counts.get(s.owner.user) ?? 0) + 1);
    let most = 0;
    for (const n of counts.values()) most = Math.max(most, n);
    for (const s of this.parkedInOrder.values()) if (counts.get(s.owner.user) === most) return s;
    return undefined;
  }
}
