/**
 * A worker's directory in a cluster: a mirror (directory/mirror.ts) copied from the primary's
 * over IPC and kept current by the primary's change feed (the protocol is in feed.ts), so the
 * node reads Redis once however many workers it runs. Reads are local and synchronous, as from
 * the primary's own mirror; writes go to the primary's (fenced with the node's lease token), which
 * answers once its mirror shows them, and every entry it applied has come here before its answer:
 * a writer reads its own write.
 */
import { deserialize } from 'node:v8';
import type { Directory, DirectoryChange, PutVmOptions, UserRecord, VmRecord } from '../directory/directory.js';
import { MirroredDirectory } from '../directory/mirrored.js';
import { DirectoryMirror } from '../directory/mirror.js';
import type { ParsedPage } from '../directory/page.js';
import type { ResyncEvent, ResyncReason, Staleness } from '../directory/redis.js';
import type { Logger } from '../log.js';
import type { Rpc } from './ipc.js';
import type { FeedEntry, FeedHead, FeedPage } from './feed.js';
import type { DirectoryWrite } from './remote.js';

/** What the primary answers a write in a cluster: the write's result and its mirror's version then. */
export interface FedWriteReply {
  readonly r: unknown;
  readonly v: number;
}

/** How long a write waits for the primary's version to show here (it has always come before the answer but after a reload). */
const VISIBLE_MS = 5_000;

export class FedDirectory extends MirroredDirectory implements Directory {
  readonly kind = 'redis' as const;
  private gen = 0;
  /** The load in progress: its head and the entries after it. */
  private load: { head: FeedHead; entries: FeedEntry['e'][] } | undefined;
  private heads: ((h: FeedHead) => void) | undefined;
  /** A new load is wanted (a reload, a gap) and why. */
  private wanted: ResyncReason | undefined;
  private wake: (() => void) | undefined;
  private stale: Staleness = { connected: true, lastSyncAt: Date.now(), ageMs: 0 };
  private closed = false;

  /** Resolves once the first copy is loaded. */
  static async open(rpc: Rpc, openRing: ((text: string) => string | undefined) | undefined, log: Logger): Promise<FedDirectory> {
    const dir = new FedDirectory(rpc, openRing, log);
    await dir.copy('start');
    void dir.run();
    return dir;
  }

  private constructor(
    private readonly rpc: Rpc,
    openRing: ((text: string) => string | undefined) | undefined,
    private readonly log: Logger,
  ) {
    super(new DirectoryMirror(openRing));
    rpc.on('dir-head', (h) => {
      if (!this.heads) return;
      // At once: entries that came in the same batch as the head are dispatched before copy() runs on.
      const head = h as FeedHead;
      this.load = { head, entries: [...head.entries] };
      this.heads(head);
    });
    rpc.on('dir-entry', (a) => this.entry(a as FeedEntry));
    rpc.on('dir-reload', (ev) => this.want((ev as ResyncEvent).reason));
    rpc.on('dir-resync', (ev) => this.emit('resync', ev));
    rpc.on('dir-state', (st) => {
      this.stale = st as Staleness;
      this.emit('connection', this.stale.connected);
    });
  }

  // ---- reads: the local copy (directory/mirrored.ts) -------------------------------------------

  /**
   * The primary's mirror's freshness, as it last said (on a change): while Redis is away, the age
   * counts from the primary's last sync (same machine, same clock); while it is reachable, 0.
   */
  staleness(): Staleness {
    return { ...this.stale, ageMs: this.stale.connected ? 0 : Math.max(0, Date.now() - this.stale.lastSyncAt) };
  }

  // ---- writes: the primary's --------------------------------------------------------------------

  async putUser(user: UserRecord): Promise<void> {
    await this.write('putUser', [user]);
  }
  deleteUser(name: string): Promise<boolean> {
    return this.write('deleteUser', [name]);
  }
  putVm(vm: VmRecord, opts?: PutVmOptions): Promise<boolean> {
    return this.write('putVm', [vm, opts ?? {}]);
  }
  putVms(vms: readonly VmRecord[], ifEpochs: readonly number[]): Promise<boolean[]> {
    return this.write('putVms', [vms, ifEpochs]);
  }
  deleteVm(name: string): Promise<boolean> {
    return this.write('deleteVm', [name]);
  }
  async rotateKeys(): Promise<void> {
    await this.write('rotateKeys', []);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    this.wakeWaiters(true);
    this.removeAllListeners();
  }

  private async write<T>(op: DirectoryWrite, args: unknown[]): Promise<T> {
    const reply = await this.rpc.call<FedWriteReply>('dir', { op, args });
    // Every entry the primary applied came before its answer, unless its mirror loaded again meanwhile.
    if (!this.closed) await this.awaitVersion(reply.v, VISIBLE_MS);
    return reply.r as T;
  }

  // ---- the copy: a load, then the feed ------------------------------------------------------------

  private entry({ gen, e }: FeedEntry): void {
    if (this.load) {
      if (gen === this.load.head.gen) this.load.entries.push(e);
      return;
    }
    if (gen !== this.gen || this.wanted) return;
    const r = this.mirror.apply(e);
    if ('applied' in r) {
      for (const c of r.applied) this.emitChange(c);
      this.wakeWaiters();
      return;
    }
    // Not expected (the primary sends what its mirror applied, in order): load again rather than guess.
    this.log.warn({ event: 'directory-feed-gap', detail: 'gap' in r ? r.gap : r.invalid }, 'directory copy: an entry from the primary did not follow; loading again');
    this.want('gap' in r ? 'gap' : 'invalid-entry');
  }

  private want(reason: ResyncReason): void {
    this.wanted ??= reason;
    this.wake?.();
  }

  /** Load again whenever asked, until closed. */
  private async run(): Promise<void> {
    while (!this.closed) {
      if (this.wanted === undefined) await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
      const reason = this.wanted;
      if (reason === undefined || this.closed) continue;
      try {
        await this.copy(reason);
      } catch (err) {
        if (this.closed) return;
        this.log.warn({ event: 'directory-copy-failed', err: (err as Error).message }, 'directory copy from the primary failed; trying again');
        this.wanted ??= reason;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /**
   * One load from the primary's mirror (feed.ts). Returns once loaded; a load the primary calls
   * stale (its mirror began a load of its own) waits for its 'dir-reload' and starts again.
   */
  private async copy(reason: ResyncReason): Promise<void> {
    for (;;) {
      this.wanted = undefined;
      const head = await new Promise<FeedHead>((resolve) => {
        this.heads = resolve;
        this.rpc.note('dir-load');
      });
      this.heads = undefined;
      if (this.closed) {
        this.load = undefined;
        return;
      }
      this.stale = head.staleness;
      this.mirror.beginLoad();
      let stale = false;
      const invalid: string[] = [];
      const ask = (): Promise<FeedPage> => this.rpc.call<FeedPage>('dir-page', { gen: head.gen });
      let next = ask();
      /** The head: known now, or (a copy of the primary's load as it goes) with the last page. */
      let final = head.pending ? undefined : head;
      try {
        for (;;) {
          const page = await next;
          if (page.stale || this.closed) {
            stale = true;
            break;
          }
          if (page.done) {
            final ??= page.head;
            if (!final) throw new Error('directory copy: the primary ended a load without its head');
            break;
          }
          // The next page is on its way while this one is parsed (the primary answers in order).
          next = ask();
          if (page.wait) continue;
          if (page.pages) for (const p of deserialize(page.pages) as ParsedPage[]) invalid.push(...this.mirror.applyPage(p));
          else if (page.kind && page.flat) invalid.push(...this.mirror.loadPage(page.kind, page.flat));
        }
      } catch (err) {
        this.mirror.abortLoad();
        this.load = undefined;
        throw err;
      }
      if (stale || !final) {
        this.mirror.abortLoad();
        this.load = undefined;
        if (this.closed) return;
        // The primary's mirror is loading: its 'dir-reload' comes when it is whole again.
        if (this.wanted === undefined) await new Promise<void>((r) => (this.wake = r));
        this.wake = undefined;
        continue;
      }
      const from = this.mirror.version;
      // A pending head's own entries come with the last page; those applied since came as notes.
      const entries = final === head ? (this.load?.entries ?? head.entries) : [...final.entries, ...(this.load?.entries ?? [])];
      const loaded = this.mirror.endLoad(final, entries);
      this.load = undefined;
      this.gen = final.gen;
      this.stale = final.staleness;
      invalid.push(...loaded.invalid);
      if (invalid.length) this.log.error({ event: 'directory-invalid-records', records: invalid }, 'directory: skipped malformed records');
      for (const c of loaded.changes) this.emitChange(c);
      this.wakeWaiters();
      this.emit('resync', { reason, from, to: this.mirror.version, changed: loaded.changed, reseeded: false } satisfies ResyncEvent);
      return;
    }
  }

  private emitChange(c: DirectoryChange): void {
    try {
      this.emit('change', c);
    } catch (err) {
      this.log.error({ event: 'directory-listener-error', err }, 'directory change listener threw');
    }
  }
}
