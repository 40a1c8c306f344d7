/**
 * The in-memory mirror of a Redis directory: plain maps the data path reads synchronously, fed by
 * a snapshot and then by the change feed's entries, strictly in version order. Pure (no I/O), so
 * the ordering rules are easy to read and to test: redis.ts owns the connections and decides when
 * to take a snapshot.
 *
 * Each record is kept as the JSON text it came from (parsed when read), so a resync can tell
 * exactly which records differ by their text, and announce only those. Pages arrive checked and
 * parsed (page.ts: in the snapshot's scan thread for a large load), so applying one parses nothing.
 */
import type { DirectoryChange, KeyRing, UserRecord, VmRecord } from './directory.js';
import { VmTable, type VmIndexFields, type VmTableOptions } from './vm-table.js';
import { eachVm, parsePage, parseRecord, type ParsedPage } from './page.js';

/** One change-feed entry, as the write scripts in redis.ts append it. */
export interface ChangeEntry {
  /** Stream entry id, e.g. "1700000000000-0". */
  readonly id: string;
  /** Directory version after this change. */
  readonly version: number;
  /**
   * 'seed' marks a whole directory written back into an emptied Redis (a resync for readers);
   * 'vms' is a batch of VM writes at one version (a failover), carried in `records`.
   */
  readonly kind: 'user' | 'vm' | 'keys' | 'seed' | 'vms';
  readonly name: string;
  /** The record's JSON after the change; undefined for a delete. */
  readonly data: string | undefined;
  /** A 'vms' batch: each VM's name and JSON, in write order (fields `r:<name>` of the entry). */
  readonly records?: ReadonlyArray<readonly [string, string]> | undefined;
}

/** A consistent view of the whole directory held at once (tests; redis.ts loads page by page). */
export interface Snapshot {
  readonly users: ReadonlyMap<string, string>;
  readonly vms: ReadonlyMap<string, string>;
  /** JSON of the key ring; undefined if Redis has none yet. */
  readonly keys: string | undefined;
  readonly version: number;
  /** Id of the change feed's last entry at that version ("0-0" for an empty feed). */
  readonly lastId: string;
}

export type ApplyResult =
  /** One change, or one per VM of a 'vms' batch, all stamped with the entry's version. */
  | { readonly applied: readonly DirectoryChange[] }
  /** The entry does not follow the applied version: something was missed; take a snapshot. */
  | { readonly gap: { readonly expected: number; readonly got: number; readonly kind: ChangeEntry['kind'] } }
  /** A malformed entry or record JSON: take a snapshot rather than guess. */
  | { readonly invalid: string };

/** What the mirror holds of the key ring: parsed (read on every ticket), and its text in Redis. */
interface HeldRing {
  readonly record: KeyRing;
  readonly json: string;
}

/**
 * A paged load in progress (beginLoad .. endLoad). `seen*` are the names the load found, kept only
 * when the mirror was not empty when it began (what it did not find is then removed at the end);
 * `touched*` are the records it changed, kept only when those changes will be announced.
 */
interface Load {
  readonly seenUsers: Set<string> | undefined;
  readonly seenVms: Set<string> | undefined;
  users: number;
  vms: number;
}

/**
 * What a finished load changed: one change per record (and for the key ring) that differs, when
 * announced (`changes`, empty when not); how many changed either way; records skipped as malformed.
 */
export interface LoadResult {
  readonly changes: DirectoryChange[];
  readonly changed: number;
  readonly invalid: string[];
}

/**
 * Records are kept as the JSON text Redis holds (one string per record, plus the indexes): the
 * parsed object is made when a record is read. At 1M VMs, keeping every record parsed beside its
 * text cost ~15 heap objects per VM (800 B per VM) and most of a node's start in garbage
 * collection (every object survives, so each young-generation collection copied them all); a
 * record read is one JSON.parse of ~300 bytes (a few microseconds), O(what the call returns).
 */
export class DirectoryMirror {
  /**
   * @param openRing the key ring's JSON from its text in Redis (cluster/seal.ts: a sealed ring is
   *   opened here; undefined when it cannot be). Default: the text is the JSON.
   * @param index which indexes the VM table keeps (vm-table.ts): all by default.
   */
  constructor(
    private readonly openRing: (text: string) => string | undefined = (text) => text,
    index: VmTableOptions = {},
  ) {
    this.vms = new VmTable<string>((json) => JSON.parse(json) as VmRecord, index);
  }

  private readonly users = new Map<string, string>();
  private readonly vms: VmTable<string>;
  private keyRing: HeldRing | undefined;
  private ver = 0;
  private last = '0-0';
  private loading: Load | undefined;
  /**
   * Records changed in place by loads since the last one that ended (a load given up keeps its
   * changes in the mirror: the next load to end announces them). 'all': the first of those loads
   * began on an empty mirror, so everything it holds is new, and nobody listens yet (the node is
   * starting): counted, not listed.
   */
  private touched: { readonly users: Set<string>; readonly vms: Set<string> } | 'all' | undefined;

  /** The version readers see. */
  get version(): number {
    return this.ver;
  }
  /** The change-feed id to read after. */
  get lastId(): string {
    return this.last;
  }
  /** The key ring as Redis holds it (sealed or not), for writing it back (compare-and-set rotation, re-seeding). */
  get keysJson(): string | undefined {
    return this.keyRing?.json;
  }

  getUser(name: string): UserRecord | undefined {
    return read<UserRecord>(this.users.get(name));
  }
  getVm(name: string): VmRecord | undefined {
    return read<VmRecord>(this.vms.get(name));
  }
  listUsers(): UserRecord[] {
    return readAll<UserRecord>(this.users.values());
  }
  listVms(): VmRecord[] {
    return readAll<VmRecord>(this.vms.values());
  }
  /** The VMs `node` owns: O(their number). */
  vmsOnNode(node: string): VmRecord[] {
    return readAll<VmRecord>(this.vms.onNode(node));
  }
  /** The VMs `node` owns that are `recovering` or `down`. */
  unsettledVms(node: string): VmRecord[] {
    return readAll<VmRecord>(this.vms.unsettledOn(node));
  }
  /** The VMs assigned to `user` (by name or group): O(their number). Throws in a mirror kept without that index. */
  vmsForUser(user: UserRecord): VmRecord[] {
    return readAll<VmRecord>(this.vms.forUser(user));
  }
  keys(): KeyRing | undefined {
    return this.keyRing?.record;
  }
  /** The records of one kind as [name, JSON text], live (workers/feed.ts pages them to the workers). */
  records(kind: 'user' | 'vm'): IterableIterator<[string, string]> {
    return kind === 'user' ? this.users.entries() : this.vms.entries();
  }

  /** Every record's JSON, for re-seeding an emptied Redis. */
  dump(): { users: Array<[string, string]>; vms: Array<[string, string]>; keys: string | undefined; version: number } {
    return { users: [...this.users], vms: [...this.vms], keys: this.keyRing?.json, version: this.ver };
  }

  /**
   * Apply the next entry of the change feed. Only version `applied + 1` is applied; anything else
   * (a gap, a replay, a trimmed feed, a re-seeded Redis) is reported so the caller resyncs.
   */
  apply(e: ChangeEntry): ApplyResult {
    if (this.loading) throw new Error('directory mirror: a feed entry applied during a load');
    if (e.kind === 'seed' || e.version !== this.ver + 1) {
      return { gap: { expected: this.ver + 1, got: e.version, kind: e.kind } };
    }
    const changes: DirectoryChange[] = [];
    if (e.kind === 'keys') {
      if (e.data === undefined) return { invalid: `entry ${e.id}: a key ring change without data` };
      const ring = this.parseRing(e.data);
      if (!ring) return { invalid: `entry ${e.id}: malformed key ring` };
      this.keyRing = { record: ring, json: e.data };
      changes.push({ kind: 'keys', version: e.version });
    } else if (e.kind === 'vms') {
      // All or nothing: check every record before the first is applied.
      const parsed: Array<[VmRecord, string]> = [];
      for (const [name, json] of e.records ?? []) {
        const rec = parseRecord('vm', json, name);
        if (!rec) return { invalid: `entry ${e.id}: malformed vm ${JSON.stringify(name)}` };
        parsed.push([rec as VmRecord, json]);
      }
      for (const [rec, json] of parsed) {
        this.vms.set(rec.name, json, rec);
        changes.push({ kind: 'vm', name: rec.name, version: e.version });
      }
    } else {
      if (e.data === undefined) this.remove(e.kind, e.name);
      else {
        const rec = parseRecord(e.kind, e.data, e.name);
        if (!rec) return { invalid: `entry ${e.id}: malformed ${e.kind} ${JSON.stringify(e.name)}` };
        this.store(e.kind, e.name, e.data, rec as VmIndexFields);
      }
      changes.push({ kind: e.kind, name: e.name, version: e.version });
    }
    this.ver = e.version;
    this.last = e.id;
    return { applied: changes };
  }

  /**
   * Start a paged load (a resync): `loadPage` or `applyPage` for each page of each hash, then
   * `endLoad` with the head and the feed entries after it. Pages are applied in place as they come,
   * so a load never holds a second copy of the directory (a record whose text did not change is
   * not even touched);
   * meanwhile readers see each record either as it was or as a page (or a later entry) has it,
   * and `version` stays the old one until endLoad.
   */
  beginLoad(): void {
    const fresh = this.users.size === 0 && this.vms.size === 0;
    this.loading = { seenUsers: fresh ? undefined : new Set(), seenVms: fresh ? undefined : new Set(), users: 0, vms: 0 };
    this.touched ??= fresh && this.ver === 0 ? 'all' : { users: new Set(), vms: new Set() };
  }

  /**
   * One HSCAN page (name, JSON, name, JSON...). Returns the records skipped as malformed (they are
   * removed from the mirror when the load ends, as if absent from Redis).
   */
  loadPage(kind: 'user' | 'vm', flat: readonly string[]): string[] {
    return this.applyPage(parsePage(kind, flat));
  }

  /**
   * One page already checked and parsed (page.ts: here by loadPage, or in the snapshot's scan
   * thread). Returns its malformed records, like loadPage.
   */
  applyPage(page: ParsedPage): string[] {
    const load = this.need();
    const { kind, records } = page;
    const seen = kind === 'user' ? load.seenUsers : load.seenVms;
    const count = records.length / 2 + page.invalid.length;
    if (kind === 'user') load.users += count;
    else load.vms += count;
    const apply = (name: string, json: string, fields?: VmIndexFields): void => {
      // Unchanged (only a mirror that held records before the load has any to compare with).
      if (seen !== undefined && (kind === 'user' ? this.users.get(name) : this.vms.get(name)) === json) {
        seen.add(name);
        return;
      }
      seen?.add(name);
      this.store(kind, name, json, fields);
    };
    if (kind === 'vm') eachVm(page, apply);
    else for (let i = 0; i + 1 < records.length; i += 2) apply(records[i]!, records[i + 1]!);
    return page.invalid;
  }

  /**
   * Finish a load: replay the feed entries after the head (in version order, already checked to
   * follow each other), remove what the load did not find, and move to `version`. Synchronous, so
   * readers never see the replay's intermediate states. Returns one change per record the load
   * changed, except in a first load of an empty mirror (nobody listens yet: only counted).
   */
  endLoad(head: { keys: string | undefined; version: number; lastId: string }, entries: readonly ChangeEntry[]): LoadResult {
    const load = this.need();
    const invalid: string[] = [];
    let keys = head.keys;
    for (const e of entries) {
      if (e.kind === 'keys') keys = e.data;
      else if (e.kind === 'vms' || e.kind === 'user' || e.kind === 'vm') {
        const records: ReadonlyArray<readonly [string, string | undefined]> = e.kind === 'vms' ? (e.records ?? []) : [[e.name, e.data]];
        const kind = e.kind === 'user' ? 'user' : 'vm';
        const seen = kind === 'user' ? load.seenUsers : load.seenVms;
        for (const [name, json] of records) {
          if (json === undefined) {
            this.remove(kind, name);
            seen?.delete(name);
            continue;
          }
          const rec = parseRecord(kind, json, name);
          if (!rec) {
            invalid.push(`${kind} ${JSON.stringify(name)}`);
            seen?.delete(name);
            this.remove(kind, name);
            continue;
          }
          seen?.add(name);
          this.store(kind, name, json, rec as VmIndexFields);
        }
      }
    }
    // What neither the pages nor the entries hold is gone from Redis (or was malformed there).
    if (load.seenUsers) for (const name of [...this.users.keys()]) if (!load.seenUsers.has(name)) this.remove('user', name);
    if (load.seenVms) for (const name of [...this.vms.keys()]) if (!load.seenVms.has(name)) this.remove('vm', name);
    const version = entries.length ? entries[entries.length - 1]!.version : head.version;
    const changes: DirectoryChange[] = [];
    let changed = this.users.size + this.vms.size;
    if (this.touched !== 'all') {
      for (const name of this.touched?.users ?? []) changes.push({ kind: 'user', name, version });
      for (const name of this.touched?.vms ?? []) changes.push({ kind: 'vm', name, version });
      changed = changes.length;
    }
    if (keys !== undefined && keys !== this.keyRing?.json) {
      const ring = this.parseRing(keys);
      if (ring) {
        this.keyRing = { record: ring, json: keys };
        changes.push({ kind: 'keys', version });
        changed++;
      } else invalid.push('keys');
    }
    this.ver = version;
    this.last = entries.length ? entries[entries.length - 1]!.id : head.lastId;
    this.loading = undefined;
    this.touched = undefined;
    return { changes, changed, invalid };
  }

  /** Give a load up (Redis lost the directory, the feed moved on): what it changed stays, unannounced until a load ends. */
  abortLoad(): void {
    this.loading = undefined;
  }

  /** Records counted by the load in progress (pages only), to tell an emptied Redis. */
  get loaded(): { users: number; vms: number } {
    const load = this.need();
    return { users: load.users, vms: load.vms };
  }

  /**
   * Replace everything with a snapshot held whole (tests, and callers that read one at once):
   * one load of a single page per hash.
   */
  replace(s: Snapshot): LoadResult {
    this.beginLoad();
    const invalid = [...this.loadPage('user', [...s.users].flat()), ...this.loadPage('vm', [...s.vms].flat())];
    const r = this.endLoad(s, []);
    return { ...r, invalid: [...invalid, ...r.invalid] };
  }

  private need(): Load {
    if (!this.loading) throw new Error('directory mirror: no load in progress');
    return this.loading;
  }

  /** `fields`: a VM's index fields, when the caller has them (the VM's JSON is parsed otherwise). */
  private store(kind: 'user' | 'vm', name: string, json: string, fields?: VmIndexFields): void {
    if (kind === 'user') this.users.set(name, json);
    else this.vms.set(name, json, fields);
    this.touch(kind, name);
  }

  private remove(kind: 'user' | 'vm', name: string): void {
    if (kind === 'user' ? this.users.delete(name) : this.vms.delete(name)) this.touch(kind, name);
  }

  /** Remember a record a load changed (feed entries announce their own changes). */
  private touch(kind: 'user' | 'vm', name: string): void {
    if (!this.loading || this.touched === undefined || this.touched === 'all') return;
    (kind === 'user' ? this.touched.users : this.touched.vms).add(name);
  }

  private parseRing(text: string): KeyRing | undefined {
    const json = this.openRing(text);
    return json === undefined ? undefined : parseKeyRing(json);
  }
}

/** A stored record as its reader gets it: parsed from the text checked when it was stored. */
function read<T>(json: string | undefined): T | undefined {
  return json === undefined ? undefined : (Object.freeze(JSON.parse(json)) as T);
}

function readAll<T>(jsons: Iterable<string>): T[] {
  const out: T[] = [];
  for (const json of jsons) out.push(Object.freeze(JSON.parse(json)) as T);
  return out;
}

function parseKeyRing(json: string): KeyRing | undefined {
  try {
    const v = JSON.parse(json) as Partial<KeyRing> | null;
    if (!v || typeof v.current?.secret !== 'string' || typeof v.current.id !== 'number' || !Array.isArray(v.previous)) return undefined;
    return Object.freeze(v as KeyRing);
  } catch {
    return undefined;
  }
}

/** Parse one XREAD/XRANGE entry ([id, [field, value, ...]]) into a ChangeEntry, or undefined. */
export function parseEntry(raw: unknown): ChangeEntry | undefined {
  if (!Array.isArray(raw) || typeof raw[0] !== 'string' || !Array.isArray(raw[1])) return undefined;
  const fields = raw[1] as unknown[];
  const f = new Map<string, string>();
  const records: Array<[string, string]> = [];
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const k = String(fields[i]);
    if (k.startsWith('r:')) records.push([k.slice(2), String(fields[i + 1])]);
    else f.set(k, String(fields[i + 1]));
  }
  const version = Number(f.get('v'));
  const kind = f.get('k');
  if (!Number.isSafeInteger(version) || (kind !== 'user' && kind !== 'vm' && kind !== 'keys' && kind !== 'seed' && kind !== 'vms')) return undefined;
  return { id: raw[0], version, kind, name: f.get('n') ?? '', data: f.get('d'), ...(kind === 'vms' ? { records } : {}) };
}

/** Stream ids compare as (ms, seq) pairs. */
export function compareIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am !== bm ? Math.sign(am - bm) : Math.sign(as - bs);
}
