/**
 * One HSCAN page of the directory, checked and parsed into the compact form the mirror applies
 * (mirror.ts applyPage): the well-formed records' names and JSON texts, the malformed ones' names,
 * and for VMs the index fields (node, state, users, groups) as numbers into a list of the page's
 * distinct strings. Pure, so the same function runs on the main thread (a small directory, tests)
 * and in the snapshot's scan thread (scan-worker.ts), whose pages cross to the main thread as a
 * few arrays of strings and one transferred Int32Array: no object per record to clone, and the
 * main thread does not parse a record it loads (JSON.parse was ~20 % of a 1M-VM start).
 */
import type { VmRecord } from './directory.js';
import type { VmIndexFields } from './vm-table.js';

export interface ParsedPage {
  readonly kind: 'user' | 'vm';
  /** Name, JSON, name, JSON... of the page's well-formed records, in page order. */
  readonly records: string[];
  /** The malformed ones, as `<kind> "<name>"`. */
  readonly invalid: string[];
  /** VMs: each string the page's index fields name, once. */
  readonly keys: string[];
  /**
   * VMs, one run per record of `records`: node, state (indexes into `keys`), the number of users,
   * their indexes, the number of groups, their indexes. Empty for users.
   */
  readonly refs: Int32Array;
}

/**
 * A record's JSON, parsed, if it is an object whose name is its key; a VM must also carry the
 * index's fields (a node name, lists of user and group names), or indexing it would fail.
 */
export function parseRecord(kind: 'user' | 'vm', json: string, name: string): object | undefined {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || (v as { name?: unknown }).name !== name) return undefined;
  if (kind === 'vm') {
    const vm = v as Partial<Record<keyof VmIndexFields, unknown>>;
    if (typeof vm.node !== 'string' || !isStrings(vm.users) || !isStrings(vm.groups)) return undefined;
  }
  return v;
}

function isStrings(v: unknown): v is string[] {
  if (!Array.isArray(v)) return false;
  for (const s of v) if (typeof s !== 'string') return false;
  return true;
}

/** Check and parse one page (`flat`: name, JSON, name, JSON... as HSCAN returns it). */
export function parsePage(kind: 'user' | 'vm', flat: readonly string[]): ParsedPage {
  const records: string[] = [];
  const invalid: string[] = [];
  const keys: string[] = [];
  const keyAt = new Map<string, number>();
  const refs: number[] = [];
  const ref = (s: string): void => {
    let i = keyAt.get(s);
    if (i === undefined) keyAt.set(s, (i = keys.push(s) - 1));
    refs.push(i);
  };
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const name = flat[i]!;
    const json = flat[i + 1]!;
    const rec = parseRecord(kind, json, name);
    if (!rec) {
      invalid.push(`${kind} ${JSON.stringify(name)}`);
      continue;
    }
    records.push(name, json);
    if (kind === 'user') continue;
    const vm = rec as VmIndexFields;
    ref(vm.node);
    ref(String(vm.state));
    refs.push(vm.users.length);
    for (const u of vm.users) ref(u);
    refs.push(vm.groups.length);
    for (const g of vm.groups) ref(g);
  }
  return { kind, records, invalid, keys, refs: Int32Array.from(refs) };
}

/**
 * The VMs of a parsed page, one at a time: `fn(name, json, fields)`. `fields` is one object
 * reused for every VM (valid during the call only): reading a page allocates nothing per record.
 */
export function eachVm(page: ParsedPage, fn: (name: string, json: string, fields: VmIndexFields) => void): void {
  const { records, keys, refs } = page;
  const users: string[] = [];
  const groups: string[] = [];
  const fields = { node: '', state: 'running' as VmRecord['state'], users, groups };
  let at = 0;
  for (let i = 0; i + 1 < records.length; i += 2) {
    fields.node = keys[refs[at++]!]!;
    fields.state = keys[refs[at++]!]! as VmRecord['state'];
    users.length = 0;
    for (let n = refs[at++]!; n > 0; n--) users.push(keys[refs[at++]!]!);
    groups.length = 0;
    for (let n = refs[at++]!; n > 0; n--) groups.push(keys[refs[at++]!]!);
    fn(records[i]!, records[i + 1]!, fields);
  }
}
