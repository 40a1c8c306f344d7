/**
 * The in-memory mirror of a Redis directory: plain maps the data path reads synchronously, fed by
 * a snapshot and then by the change feed's entries, strictly in version order. Pure (no I/O), so
 * the ordering rules are easy to read and to test: redis.ts owns the connections and decides when
 * to take a snapshot.
 *
 * Each record is kept with the JSON text it came from, so a resync can tell exactly which records
 * differ and announce only those.
 */
import type { DirectoryChange, KeyRing, UserRecord, VmRecord } from './directory.js';
import { VmTable } from './vm-table.js';

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

/** A consistent view of the whole directory, read in one Lua script. */
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

interface Held<T> {
  readonly record: T;
  readonly json: string;
}

/** What the mirror needs of its users' Map and its VmTable alike. */
interface HeldMap<T> extends Iterable<[string, Held<T>]> {
  get(name: string): Held<T> | undefined;
  has(name: string): boolean;
  set(name: string, held: Held<T>): void;
  delete(name: string): boolean;
}

export class DirectoryMirror {
  /**
   * @param openRing the key ring's JSON from its text in Redis (cluster/seal.ts: a sealed ring is
   *   opened here; undefined when it cannot be). Default: the text is the JSON.
   */
  constructor(private readonly openRing: (text: string) => string | undefined = (text) => text) {}

  private readonly users = new Map<string, Held<UserRecord>>();
  private readonly vms = new VmTable<Held<VmRecord>>((h) => h.record);
  private keyRing: Held<KeyRing> | undefined;
  private ver = 0;
  private last = '0-0';

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
    return this.users.get(name)?.record;
  }
  getVm(name: string): VmRecord | undefined {
    return this.vms.get(name)?.record;
  }
  listUsers(): UserRecord[] {
    return [...this.users.values()].map((h) => h.record);
  }
  listVms(): VmRecord[] {
    return [...this.vms.values()].map((h) => h.record);
  }
  /** The VMs `node` owns: O(their number). */
  vmsOnNode(node: string): VmRecord[] {
    return this.vms.onNode(node).map((h) => h.record);
  }
  /** The VMs `node` owns that are `recovering` or `down`. */
  unsettledVms(node: string): VmRecord[] {
    return this.vms.unsettledOn(node).map((h) => h.record);
  }
  /** The VMs assigned to `user` (by name or group): O(their number). */
  vmsForUser(user: UserRecord): VmRecord[] {
    return this.vms.forUser(user).map((h) => h.record);
  }
  keys(): KeyRing | undefined {
    return this.keyRing?.record;
  }
  /** Every record's JSON, for re-seeding an emptied Redis. */
  dump(): { users: Array<[string, string]>; vms: Array<[string, string]>; keys: string | undefined; version: number } {
    return {
      users: [...this.users].map(([n, h]) => [n, h.json]),
      vms: [...this.vms].map(([n, h]) => [n, h.json]),
      keys: this.keyRing?.json,
      version: this.ver,
    };
  }

  /**
   * Apply the next entry of the change feed. Only version `applied + 1` is applied; anything else
   * (a gap, a replay, a trimmed feed, a re-seeded Redis) is reported so the caller resyncs.
   */
  apply(e: ChangeEntry): ApplyResult {
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
      const parsed: Array<Held<VmRecord>> = [];
      for (const [name, json] of e.records ?? []) {
        const rec = parseRecord(json, name);
        if (!rec) return { invalid: `entry ${e.id}: malformed vm ${JSON.stringify(name)}` };
        parsed.push({ record: rec as VmRecord, json });
      }
      for (const held of parsed) {
        this.vms.set(held.record.name, held);
        changes.push({ kind: 'vm', name: held.record.name, version: e.version });
      }
    } else {
      const map = (e.kind === 'user' ? this.users : this.vms) as HeldMap<UserRecord | VmRecord>;
      if (e.data === undefined) map.delete(e.name);
      else {
        const rec = parseRecord(e.data, e.name);
        if (!rec) return { invalid: `entry ${e.id}: malformed ${e.kind} ${JSON.stringify(e.name)}` };
        map.set(e.name, { record: rec as UserRecord & VmRecord, json: e.data });
      }
      changes.push({ kind: e.kind, name: e.name, version: e.version });
    }
    this.ver = e.version;
    this.last = e.id;
    return { applied: changes };
  }

  /**
   * Replace everything with a snapshot; returns one change per record (and for the key ring)
   * that differs, stamped with the snapshot's version. Malformed records are skipped and named
   * in `invalid`.
   */
  replace(s: Snapshot): { changes: DirectoryChange[]; invalid: string[] } {
    const changes: DirectoryChange[] = [];
    const invalid: string[] = [];
    const version = s.version;
    const swap = <T extends UserRecord | VmRecord>(kind: 'user' | 'vm', map: HeldMap<T>, next: ReadonlyMap<string, string>): void => {
      for (const [name, held] of [...map]) {
        if (next.get(name) === held.json) continue;
        map.delete(name);
        if (!next.has(name)) changes.push({ kind, name, version });
      }
      for (const [name, json] of next) {
        if (map.has(name)) continue;
        const rec = parseRecord(json, name);
        if (!rec) {
          invalid.push(`${kind} ${JSON.stringify(name)}`);
          continue;
        }
        map.set(name, { record: rec as T, json });
        changes.push({ kind, name, version });
      }
    };
    swap('user', this.users, s.users);
    swap('vm', this.vms, s.vms);
    if (s.keys !== undefined && s.keys !== this.keyRing?.json) {
      const ring = this.parseRing(s.keys);
      if (ring) {
        this.keyRing = { record: ring, json: s.keys };
        changes.push({ kind: 'keys', version });
      } else invalid.push('keys');
    }
    this.ver = version;
    this.last = s.lastId;
    return { changes, invalid };
  }

  private parseRing(text: string): KeyRing | undefined {
    const json = this.openRing(text);
    return json === undefined ? undefined : parseKeyRing(json);
  }
}

function parseRecord(json: string, name: string): object | undefined {
  try {
    const v: unknown = JSON.parse(json);
    if (typeof v !== 'object' || v === null || (v as { name?: unknown }).name !== name) return undefined;
    return Object.freeze(v);
  } catch {
    return undefined;
  }
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
