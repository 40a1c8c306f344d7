/**
 * One directory mirror per node (README "Workers"): in a cluster the primary alone reads the
 * directory from Redis, and its workers copy the primary's mirror over IPC (fed-directory.ts).
 * A node is one Redis client however many workers it runs: one snapshot at a start or a resync,
 * one change-feed reader. (With a mirror each, a node with N workers scanned Redis N + 1 times:
 * 21 s to start at 1M VMs with 2 workers against 9 s for one process, bench/SCALE.md.)
 *
 * The protocol, per worker, like a mirror's own load from Redis (directory/redis.ts snapshot):
 * - The worker notes 'dir-load'. Once the primary's mirror is whole (not loading), it answers with
 *   note 'dir-head' (generation, version, last feed id, key ring text, freshness), and from then
 *   on sends the worker each feed entry its mirror applies ('dir-entry', with the generation).
 * - The worker calls 'dir-page' until `done`: pages of [name, JSON] read live from the mirror.
 *   A page may show a record newer than the head; each such change has an entry after the head,
 *   which the worker replays over the pages when the last page is in (mirror.ts endLoad).
 * - A full resync of the primary's mirror starts a new generation: loads in progress are told
 *   `stale`, and every worker is sent 'dir-reload' once the mirror is whole again.
 * - 'dir-resync' (a resync that read on from the mirror's place), 'dir-state' (Redis reachable or
 *   not, and since when the mirror is in sync) pass the primary's events on.
 */
import type { RedisDirectory, ResyncEvent, Staleness } from '../directory/redis.js';
import type { ChangeEntry } from '../directory/mirror.js';
import type { Rpc } from './ipc.js';

/** Records per 'dir-page' answer: about 300 KB of JSON at ~300 bytes a VM. */
export const FEED_PAGE = 1000;

export interface FeedHead {
  readonly gen: number;
  readonly version: number;
  readonly lastId: string;
  readonly keys: string | undefined;
  readonly staleness: Staleness;
}

export interface FeedPage {
  /** The primary's mirror began a new load since the head: start again at the next 'dir-reload'. */
  readonly stale?: true;
  readonly kind?: 'user' | 'vm';
  /** name, JSON, name, JSON... */
  readonly flat?: string[];
  readonly done?: true;
}

export interface FeedEntry {
  readonly gen: number;
  readonly e: ChangeEntry;
}

interface Subscriber {
  /** Sent the feed's entries (a head went out in this generation). */
  live: boolean;
  /** Waiting for its head (asked while the mirror was loading or not open yet). */
  asked: boolean;
  users: IterableIterator<[string, string]> | undefined;
  vms: IterableIterator<[string, string]> | undefined;
}

export class DirectoryFeed {
  private gen = 1;
  private dir: RedisDirectory | undefined;
  private readonly subs = new Map<Rpc, Subscriber>();

  constructor(private readonly pageSize = FEED_PAGE) {}

  /** The primary's mirror, once open: workers that asked meanwhile get their head now. */
  open(dir: RedisDirectory): void {
    this.dir = dir;
    dir.on('entry', (e: ChangeEntry) => {
      for (const [rpc, s] of this.subs) if (s.live) rpc.note('dir-entry', { gen: this.gen, e } satisfies FeedEntry);
    });
    dir.on('resync-begin', () => {
      this.gen++;
      for (const s of this.subs.values()) this.reset(s);
    });
    dir.on('resync', (ev: ResyncEvent) => {
      for (const [rpc, s] of this.subs) {
        // A live worker has everything since its head: only a full load (which ended its load) needs a new one.
        if (s.live && ev.caughtUp === true) rpc.note('dir-resync', ev);
        else if (s.asked) this.head(rpc, s);
        else rpc.note('dir-reload', ev);
      }
    });
    dir.on('connection', () => {
      for (const [rpc, s] of this.subs) if (s.live) rpc.note('dir-state', dir.staleness());
    });
    for (const [rpc, s] of this.subs) if (s.asked) this.head(rpc, s);
  }

  /** Serve one worker's loads and send it the feed. */
  attach(rpc: Rpc): void {
    const s: Subscriber = { live: false, asked: false, users: undefined, vms: undefined };
    this.subs.set(rpc, s);
    rpc.on('dir-load', () => {
      this.reset(s);
      this.head(rpc, s);
    });
    rpc.handle('dir-page', (a) => this.page(s, (a as { gen?: unknown } | null)?.gen));
  }

  detach(rpc: Rpc): void {
    this.subs.delete(rpc);
  }

  private reset(s: Subscriber): void {
    s.live = false;
    s.users = undefined;
    s.vms = undefined;
  }

  /** Answer a 'dir-load' now if the mirror is whole; else when its load ends. */
  private head(rpc: Rpc, s: Subscriber): void {
    const dir = this.dir;
    if (!dir || dir.loading) {
      s.asked = true;
      return;
    }
    s.asked = false;
    s.live = true;
    s.users = dir.records('user');
    s.vms = dir.records('vm');
    rpc.note('dir-head', { gen: this.gen, ...dir.head(), staleness: dir.staleness() } satisfies FeedHead);
  }

  private page(s: Subscriber, gen: unknown): FeedPage {
    if (gen !== this.gen || !s.live || !s.users || !s.vms) return { stale: true };
    for (const [kind, it] of [['user', s.users], ['vm', s.vms]] as const) {
      const flat: string[] = [];
      while (flat.length < 2 * this.pageSize) {
        const r = it.next();
        if (r.done === true) break;
        flat.push(r.value[0], r.value[1]);
      }
      if (flat.length) return { kind, flat };
    }
    return { done: true };
  }
}
