/**
 * The VMs of a directory by name, plus the indexes that keep per-node and per-user questions
 * O(answer) instead of O(directory): which VMs a node owns, which of those are not settled
 * (`recovering` or `down`: the cluster's recovery loop), and which VMs name a user or a group.
 * Kept current on every set and delete, so the change feed drives it. Pure: no I/O.
 *
 * `T` is what the table holds per VM (the mirror keeps the record's JSON, the embedded directory
 * the record); `record` reads the VmRecord out of it (for a VM replaced or deleted).
 */
import type { UserRecord, VmRecord } from './directory.js';

/** What the indexes read of a VM record. */
export type VmIndexFields = Pick<VmRecord, 'node' | 'state' | 'users' | 'groups'>;

export interface VmTableOptions {
  /**
   * Index the VMs by user and group (`forUser`; default true). A node's primary keeps its mirror
   * without (it serves no portal; its workers' copies have it): at 1M VMs the index is about a
   * third of a load's main-thread time (bench/SCALE.md).
   */
  readonly users?: boolean;
}

/**
 * The VM names under one index key, as lean as their number allows: one name as itself, a few in
 * an array, many in a Set (kept a Set when it shrinks again). Most users and groups have a few
 * VMs: at 1M VMs and 100k users, a Set per user cost ~18 MB of the mirror's heap (bench/SCALE.md).
 */
type Names = string | string[] | Set<string>;
/** Names in an array up to this many; a Set beyond (O(1) add and remove for a node's VMs). */
const ARRAY_MAX = 16;

export class VmTable<T> {
  private readonly byName = new Map<string, T>();
  private readonly byNode = new Map<string, Names>();
  /**
   * A node's VM names while none has left it (a load, then only additions): appended to an
   * array, no Set and no check for a name already there (a name is indexed once: a VM set again
   * is unindexed first). Turned into the node's `byNode` entry when a name must be removed from
   * it. At 1M VMs over 50 nodes, the 50 Sets of 20,000 names cost ~15 % of the main thread's start
   * (bench/SCALE.md, round 4) and ~4x the memory of the arrays; most nodes never need one.
   */
  private readonly appendedByNode = new Map<string, string[]>();
  private readonly unsettledByNode = new Map<string, Names>();
  /** Undefined: kept without (VmTableOptions.users). */
  private readonly byUser: Map<string, Names> | undefined;
  private readonly byGroup: Map<string, Names> | undefined;

  constructor(
    private readonly record: (held: T) => VmRecord,
    opts: VmTableOptions = {},
  ) {
    if (opts.users !== false) {
      this.byUser = new Map();
      this.byGroup = new Map();
    }
  }

  get size(): number {
    return this.byName.size;
  }
  get(name: string): T | undefined {
    return this.byName.get(name);
  }
  has(name: string): boolean {
    return this.byName.has(name);
  }
  keys(): IterableIterator<string> {
    return this.byName.keys();
  }
  values(): IterableIterator<T> {
    return this.byName.values();
  }
  entries(): IterableIterator<[string, T]> {
    return this.byName.entries();
  }
  [Symbol.iterator](): IterableIterator<[string, T]> {
    return this.byName.entries();
  }

  /**
   * `vm`: the index fields of the record `held` holds, when the caller has them already (the
   * mirror parsed the record to check it, or a scan thread did: page.ts). Read during the call only.
   */
  set(name: string, held: T, vm: VmIndexFields = this.record(held)): void {
    const before = this.byName.get(name);
    if (before !== undefined) this.unindex(name, this.record(before));
    this.byName.set(name, held);
    this.index(name, vm);
  }

  delete(name: string): boolean {
    const before = this.byName.get(name);
    if (before === undefined) return false;
    this.unindex(name, this.record(before));
    return this.byName.delete(name);
  }

  /** The VMs `node` owns. */
  onNode(node: string): T[] {
    return this.pick(this.byNode.get(node) ?? this.appendedByNode.get(node));
  }
  /** The VMs `node` owns that are `recovering` or `down`. */
  unsettledOn(node: string): T[] {
    return this.pick(this.unsettledByNode.get(node));
  }
  /** The VMs assigned to `user`, by name or through one of its groups (isAssigned), in no set order. */
  forUser(user: UserRecord): T[] {
    if (!this.byUser || !this.byGroup) throw new Error('directory: this table keeps no per-user index');
    const names = new Set(each(this.byUser.get(user.name)));
    for (const g of user.groups) for (const n of each(this.byGroup.get(g))) names.add(n);
    return this.pick(names);
  }

  private pick(names: Names | undefined): T[] {
    const out: T[] = [];
    for (const n of each(names)) {
      const h = this.byName.get(n);
      if (h !== undefined) out.push(h);
    }
    return out;
  }

  private index(name: string, vm: VmIndexFields): void {
    const appended = this.appendedByNode.get(vm.node);
    if (appended !== undefined) appended.push(name);
    else if (this.byNode.has(vm.node)) add(this.byNode, vm.node, name);
    else this.appendedByNode.set(vm.node, [name]);
    if (vm.state === 'recovering' || vm.state === 'down') add(this.unsettledByNode, vm.node, name);
    if (!this.byUser || !this.byGroup) return;
    for (const u of distinct(vm.users)) add(this.byUser, u, name);
    for (const g of distinct(vm.groups)) add(this.byGroup, g, name);
  }

  private unindex(name: string, vm: VmRecord): void {
    const appended = this.appendedByNode.get(vm.node);
    if (appended !== undefined) {
      this.appendedByNode.delete(vm.node);
      this.byNode.set(vm.node, appended.length === 1 ? appended[0]! : appended.length <= ARRAY_MAX ? appended : new Set(appended));
    }
    remove(this.byNode, vm.node, name);
    remove(this.unsettledByNode, vm.node, name);
    if (!this.byUser || !this.byGroup) return;
    for (const u of vm.users) remove(this.byUser, u, name);
    for (const g of vm.groups) remove(this.byGroup, g, name);
  }
}

/** A VM's users or groups, each once (a name is indexed once under a key: `add` does not look). */
function distinct(names: readonly string[]): readonly string[] {
  return names.length < 2 ? names : [...new Set(names)];
}

function each(names: Names | undefined): Iterable<string> {
  return names === undefined ? [] : typeof names === 'string' ? [names] : names;
}

function add(m: Map<string, Names>, key: string, name: string): void {
  const s = m.get(key);
  if (s === undefined) m.set(key, name);
  else if (typeof s === 'string') m.set(key, [s, name]);
  else if (Array.isArray(s)) {
    if (s.length < ARRAY_MAX) s.push(name);
    else m.set(key, new Set(s).add(name));
  } else s.add(name);
}

function remove(m: Map<string, Names>, key: string, name: string): void {
  const s = m.get(key);
  if (s === undefined) return;
  if (typeof s === 'string') {
    if (s === name) m.delete(key);
  } else if (Array.isArray(s)) {
    const i = s.indexOf(name);
    if (i < 0) return;
    s[i] = s[s.length - 1]!;
    s.pop();
    if (s.length === 1) m.set(key, s[0]!);
  } else {
    s.delete(name);
    if (s.size === 0) m.delete(key);
  }
}
