/**
 * One directory mirror per node (README "Workers"): in a cluster the primary alone reads the
 * directory from Redis, and its workers copy the primary's mirror over IPC (fed-directory.ts).
 * A node is one Redis client however many workers it runs: one snapshot at a start or a resync,
 * one change-feed reader. (With a mirror each, a node with N workers scanned Redis N + 1 times:
 * 21 s to start at 1M VMs with 2 workers against 9 s for one process, bench/SCALE.md.)
 *
 * The protocol, per worker, like a mirror's own load from Redis (directory/redis.ts snapshot):
 * - The worker notes 'dir-load'. Once the primary's mirror is whole (not loading), it answers with
 *   note 'dir-head' (generation, version, last feed id, key ring text, freshness, entries to replay),
 *   and from then on sends the worker each feed entry its mirror applies ('dir-entry'). While the
 *   primary's mirror is loading (a node's start), the head is `pending`: the worker takes that
 *   load's pages as the primary reads them, and the last page brings the load's head and entries.
 * - The worker calls 'dir-page' until `done`, and replays the entries over the pages when the last
 *   is in (mirror.ts endLoad). The pages are, while it is kept, the primary's last full load as it
 *   read them from Redis, already parsed (page.ts: no JSON.parse in the worker), with that load's
 *   head and every entry applied since; else [name, JSON] read live from the mirror, with the
 *   mirror's head: a page may then show a record newer than the head, and each such change has an
 *   entry after it. A load's pages go in chunks of about FEED_PAGE records, each serialized once
 *   (v8) for every worker that takes it while another is still behind it.
 * - A full resync of the primary's mirror starts a new generation: loads in progress are told
 *   `stale`, and every worker is sent 'dir-reload' once the mirror is whole again.
 * - 'dir-resync' (a resync that read on from the mirror's place), 'dir-state' (Redis reachable or
 *   not, and since when the mirror is in sync) pass the primary's events on.
 */
import { serialize } from 'node:v8';
import type { LoadWatcher, RedisDirectory, ResyncEvent, Staleness } from '../directory/redis.js';
import type { ChangeEntry } from '../directory/mirror.js';
import type { ParsedPage } from '../directory/page.js';
import type { Rpc } from './ipc.js';

/** Records per 'dir-page' answer read from the mirror: about 600 KB at ~300 bytes a VM. */
export const FEED_PAGE = 2000;
/** The last load's pages are kept this long after it ended (workers starting with the node copy them)... */
const KEEP_LOAD_MS = 60_000;
/** ...and while fewer entries than this were applied after it (each worker copying replays them all). */
const KEEP_LOAD_ENTRIES = 10_000;
/** A page request of a copy that follows the primary's load waits this long for its next page at most. */
const STREAM_WAIT_MS = 2_000;

/** A mirror that has just loaded (a pending head's placeholder, the first load's end before the mirror is open here). */
function syncedNow(): Staleness {
  return { connected: true, lastSyncAt: Date.now(), ageMs: 0 };
}

export interface FeedHead {
  readonly gen: number;
  /**
   * The primary's mirror is loading: the pages follow as its load reads them, and the head (with
   * its entries) comes with the last ('dir-page' `done`). The fields below are then placeholders.
   */
  readonly pending?: true;
  readonly version: number;
  readonly lastId: string;
  readonly keys: string | undefined;
  readonly staleness: Staleness;
  /** Entries after the head, to replay over the pages with those that follow. */
  readonly entries: readonly ChangeEntry[];
}

export interface FeedPage {
  /** The primary's mirror began a new load since the head: start again at the next 'dir-reload'. */
  readonly stale?: true;
  /** A chunk of the primary's last load: its pages, parsed (ParsedPage[], v8-serialized). */
  readonly pages?: Uint8Array;
  readonly kind?: 'user' | 'vm';
  /** name, JSON, name, JSON... read from the mirror. */
  readonly flat?: string[];
  readonly done?: true;
  /** With `done` on a copy that began while the primary loaded: the head of that load. */
  readonly head?: FeedHead;
  /** Nothing new yet (the primary's load is waiting on Redis): ask again. */
  readonly wait?: true;
}

export interface FeedEntry {
  readonly gen: number;
  readonly e: ChangeEntry;
}

/**
 * Pages of a load, about `pageSize` records (one IPC message): a Redis page holds ~125 records,
 * and one message per Redis page cost a worker's copy of 1M VMs about 20 % more CPU and 40 % more
 * time than messages of 1,000 (measured apart from the gateway).
 */
interface Chunk {
  readonly pages: ParsedPage[];
  records: number;
  /**
   * Its serialized form, kept while a copy that has not taken it yet follows the same load: the
   * primary serializes a chunk once for all the workers that start with the node (it did for each:
   * ~0.5 s of its main thread per worker at 1M VMs).
   */
  bytes: Buffer | undefined;
}

/** The pages of one full load of the primary's mirror, as it reads them. */
interface LoadPages {
  readonly chunks: Chunk[];
  /** The load ended (its last chunk is whole however small). */
  ended: boolean;
}

/** Where a copy is in a load: the next chunk's index. */
interface Place {
  readonly load: LoadPages;
  next: number;
}

/**
 * A worker's copy under way. Of the primary's load as it goes ('load'): the worker gets its head
 * after the last page, once that load has ended (and is the kept load). Or of the kept load
 * ('kept'): the head went first, the worker is live, and dropping the kept load ends the copy.
 */
interface Copy extends Place {
  readonly of: 'load' | 'kept';
}

/** The primary's last full load, kept for the workers that copy it. */
interface KeptLoad {
  readonly load: LoadPages;
  readonly head: { keys: string | undefined; version: number; lastId: string };
  /** The entries replayed over the pages, then every entry applied since. */
  readonly entries: ChangeEntry[];
}

interface Subscriber {
  /** Sent the feed's entries (a head went out in this generation). */
  live: boolean;
  copy: Copy | undefined;
  /** Waiting for its head (asked while the mirror was loading or not open yet). */
  asked: boolean;
  /** Its copy was cut short by a new load of the primary's: it waits for a 'dir-reload'. */
  orphaned: boolean;
  users: IterableIterator<[string, string]> | undefined;
  vms: IterableIterator<[string, string]> | undefined;
}

export class DirectoryFeed implements LoadWatcher {
  private gen = 1;
  private dir: RedisDirectory | undefined;
  private readonly subs = new Map<Rpc, Subscriber>();
  /** The pages of the load in progress. */
  private building: LoadPages | undefined;
  private kept: KeptLoad | undefined;
  /** Page requests waiting for the primary's load to read more. */
  private readonly pageWaiters = new Set<() => void>();
  private serialized = 0;

  private readonly pageSize: number;
  private readonly keepEntries: number;

  constructor(opts: { pageSize?: number; keepEntries?: number } = {}) {
    this.pageSize = opts.pageSize ?? FEED_PAGE;
    this.keepEntries = opts.keepEntries ?? KEEP_LOAD_ENTRIES;
  }

  // ---- the primary's loads (RedisDirectoryOptions.loads) ------------------------------------------

  begin(): void {
    this.building = { chunks: [], ended: false };
    this.kept = undefined;
    this.gen++;
    for (const s of this.subs.values()) {
      if (s.live || s.copy) s.orphaned = true;
      this.reset(s);
    }
    this.wakePages();
  }
  page(page: ParsedPage): void {
    const chunks = this.building?.chunks;
    if (!chunks) return;
    let last = chunks[chunks.length - 1];
    if (!last || last.records >= this.pageSize) chunks.push((last = { pages: [], records: 0, bytes: undefined }));
    last.pages.push(page);
    last.records += page.records.length / 2;
    if (last.records >= this.pageSize) this.wakePages();
  }
  end(head: KeptLoad['head'], entries: readonly ChangeEntry[]): void {
    if (this.building) {
      this.building.ended = true;
      const kept: KeptLoad = { load: this.building, head, entries: [...entries] };
      this.kept = kept;
      setTimeout(() => this.kept === kept && this.dropKept(), KEEP_LOAD_MS).unref();
    }
    this.building = undefined;
    this.wakePages();
  }

  private wakePages(): void {
    for (const w of [...this.pageWaiters]) w();
  }

  /** The primary's mirror, once open: workers that asked meanwhile get their head now. */
  open(dir: RedisDirectory): void {
    this.dir = dir;
    dir.on('entry', (e: ChangeEntry) => {
      const kept = this.kept;
      if (kept) {
        kept.entries.push(e);
        if (kept.entries.length > this.keepEntries) this.dropKept();
      }
      for (const [rpc, s] of this.subs) if (s.live) rpc.note('dir-entry', { gen: this.gen, e } satisfies FeedEntry);
    });
    dir.on('resync', (ev: ResyncEvent) => {
      for (const [rpc, s] of this.subs) {
        // A live worker has everything since its head: only a full load (which ended its load) needs a new one.
        // (Live at a full load's end: it copied that very load as it went.)
        if (s.live) {
          if (ev.caughtUp === true) rpc.note('dir-resync', ev);
        } else if (s.asked) this.head(rpc, s);
        else if (!s.copy) {
          s.orphaned = false;
          rpc.note('dir-reload', ev);
        }
      }
    });
    dir.on('connection', () => {
      for (const [rpc, s] of this.subs) if (s.live) rpc.note('dir-state', dir.staleness());
    });
    for (const [rpc, s] of this.subs) {
      if (s.asked) this.head(rpc, s);
      else if (s.orphaned) {
        // Cut short during the node's first load, whose end this feed did not see.
        s.orphaned = false;
        rpc.note('dir-reload', { reason: 'start' });
      }
    }
  }

  /** Serve one worker's loads and send it the feed. */
  attach(rpc: Rpc): void {
    const s: Subscriber = { live: false, copy: undefined, asked: false, orphaned: false, users: undefined, vms: undefined };
    this.subs.set(rpc, s);
    rpc.on('dir-load', () => {
      this.reset(s);
      s.orphaned = false;
      this.head(rpc, s);
    });
    rpc.handle('dir-page', (a) => this.nextPage(s, (a as { gen?: unknown } | null)?.gen));
  }

  detach(rpc: Rpc): void {
    const s = this.subs.get(rpc);
    this.subs.delete(rpc);
    if (s) this.reset(s);
  }

  private reset(s: Subscriber): void {
    s.live = false;
    const copy = s.copy;
    s.copy = undefined;
    if (copy) for (let i = copy.next; i < copy.load.chunks.length; i++) this.release(copy.load, i);
    s.users = undefined;
    s.vms = undefined;
  }

  /** No copy from the kept load from now on: those in progress load again, from the mirror. */
  private dropKept(): void {
    this.kept = undefined;
    // Not a new generation: the live workers' feed goes on; those copying are told stale (not live).
    for (const [rpc, s] of this.subs) {
      if (s.copy?.of !== 'kept') continue;
      this.reset(s);
      rpc.note('dir-reload', { reason: 'start' });
    }
  }

  /** Answer a 'dir-load' now if the mirror is whole; else when its load ends. */
  private head(rpc: Rpc, s: Subscriber): void {
    const dir = this.dir;
    if (!dir || dir.loading) {
      if (this.building) {
        // Copy the load as it goes (at a node's start the workers no longer wait for the primary's whole load).
        s.asked = false;
        s.copy = { of: 'load', load: this.building, next: 0 };
        rpc.note('dir-head', { gen: this.gen, pending: true, version: 0, lastId: '0-0', keys: undefined, staleness: syncedNow(), entries: [] } satisfies FeedHead);
      } else s.asked = true;
      return;
    }
    s.asked = false;
    s.live = true;
    const kept = this.kept;
    let head: FeedHead;
    if (kept) {
      s.copy = { of: 'kept', load: kept.load, next: 0 };
      head = { gen: this.gen, ...kept.head, staleness: dir.staleness(), entries: [...kept.entries] };
    } else {
      s.users = dir.records('user');
      s.vms = dir.records('vm');
      head = { gen: this.gen, ...dir.head(), staleness: dir.staleness(), entries: [] };
    }
    rpc.note('dir-head', head);
  }

  private nextPage(s: Subscriber, gen: unknown): FeedPage | Promise<FeedPage> {
    if (gen !== this.gen) return { stale: true };
    if (s.copy?.of === 'load') return this.streamPage(s, s.copy);
    if (!s.live) return { stale: true };
    if (s.copy) {
      const pages = this.take(s.copy);
      if (pages) return { pages };
      // Done: dropping the kept load no longer concerns it.
      s.copy = undefined;
      return { done: true };
    }
    if (!s.users || !s.vms) return { stale: true };
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

  /** Chunks serialized so far, and the bytes of those held for copies still behind (0 once none is). */
  get stats(): { serialized: number; heldBytes: number } {
    let heldBytes = 0;
    for (const load of new Set([this.building, this.kept?.load])) for (const c of load?.chunks ?? []) heldBytes += c.bytes?.length ?? 0;
    return { serialized: this.serialized, heldBytes };
  }

  /** The next chunk at `at` if it is whole, serialized; on to the one after. */
  private take(at: Place): Uint8Array | undefined {
    const { chunks, ended } = at.load;
    const i = at.next;
    const chunk = chunks[i];
    if (!chunk || (!ended && i === chunks.length - 1 && chunk.records < this.pageSize)) return undefined;
    at.next++;
    if (!chunk.bytes) {
      chunk.bytes = serialize(chunk.pages);
      this.serialized++;
    }
    const bytes = chunk.bytes;
    this.release(at.load, i);
    return bytes;
  }

  /** Drop chunk `i`'s bytes unless a copy of the same load has yet to take it. */
  private release(load: LoadPages, i: number): void {
    const chunk = load.chunks[i];
    if (!chunk?.bytes) return;
    for (const s of this.subs.values()) {
      if (s.copy?.load === load && s.copy.next <= i) return;
    }
    chunk.bytes = undefined;
  }

  /** The next page of the load a copy follows as it goes; when that load has ended, `done` with its head. */
  private streamPage(s: Subscriber, stream: Copy): FeedPage | Promise<FeedPage> {
    const pages = this.take(stream);
    if (pages) return { pages };
    const kept = this.kept;
    if (kept?.load === stream.load) {
      s.copy = undefined;
      s.live = true;
      // (The node's first load ends before its mirror is open here: synced just now.)
      const staleness = this.dir?.staleness() ?? syncedNow();
      return { done: true, head: { gen: this.gen, ...kept.head, staleness, entries: [...kept.entries] } };
    }
    if (this.building !== stream.load) return { stale: true };
    // Wait for the load to read on (bounded: the worker asks again).
    const gen = this.gen;
    return new Promise<FeedPage>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.pageWaiters.delete(done);
        resolve(this.gen !== gen || s.copy !== stream ? { stale: true } : this.streamPage(s, stream));
      };
      const timer = setTimeout(() => {
        this.pageWaiters.delete(done);
        resolve({ wait: true });
      }, STREAM_WAIT_MS);
      this.pageWaiters.add(done);
    });
  }
}
