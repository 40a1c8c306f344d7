/**
 * The embedded directory: everything in memory, saved in the state folder (mode 0600: it holds
 * password hashes and signing keys) as two files:
 *
 * - `directory.json`, the base: the whole directory at some version, one JSON document, replaced
 *   atomically (write a temporary file, fsync, rename), so a crash leaves the old or the new one;
 * - `directory.json.log`, the changes since: one JSON line per change (`{"v":version,"k":kind,
 *   "n":name,"d":record}`, no `d` for a delete), appended and fsynced before the write resolves,
 *   so a change costs O(change), not a rewrite. Changes waiting behind a sync go out together.
 *
 * Loading reads the base, then replays the log lines newer than it. A torn tail (a crash in the
 * middle of an append: a last line without its newline, or one that does not parse) is dropped
 * and cut off the file: that change was never acknowledged. Compaction writes a new base and
 * empties the log once the log outgrows the base (and 1 MiB), and on close(), so the log costs
 * O(1) amortised per change and a cleanly stopped node leaves just the base. A crash between the
 * two steps is harmless: lines at or below the base's version are skipped.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, existsSync, truncateSync } from 'node:fs';
import { open, rename, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { VmTable } from './vm-table.js';
import type {
  PutVmOptions, Directory, DirectoryChange, KeyRing, SigningKey, UserRecord, VmRecord } from './directory.js';

interface FileShape {
  format: 'oneport-directory/1';
  version: number;
  users: UserRecord[];
  vms: VmRecord[];
  keys: KeyRing;
}

/** One line of the change log. */
interface LogLine {
  v: number;
  k: 'user' | 'vm' | 'keys';
  n?: string;
  d?: UserRecord | VmRecord | KeyRing;
}

/** The log is folded into the base once it is larger than the base and than this. */
const COMPACT_MIN_BYTES = 1 << 20; // 1 MiB

export function newSigningKey(id: number): SigningKey {
  return { id: id & 0xff, secret: randomBytes(32).toString('base64'), createdAt: Date.now() };
}

export class MemoryDirectory extends EventEmitter implements Directory {
  readonly kind = 'embedded' as const;
  private readonly users = new Map<string, UserRecord>();
  private readonly vms = new VmTable<VmRecord>((vm) => vm);
  private keyRing: KeyRing;
  private ver = 0;
  private saving: Promise<void> = Promise.resolve();
  /** Log lines not yet appended. */
  private pending: string[] = [];
  private logFh: FileHandle | undefined;
  private logBytes = 0;
  private baseBytes = 0;

  /** @param file where to persist; undefined keeps everything in memory (tests). */
  constructor(private readonly file?: string) {
    super();
    this.keyRing = { current: newSigningKey(1), previous: [] };
    if (file && existsSync(file)) this.load(file);
    if (file) this.replay(`${file}.log`);
  }

  private load(file: string): void {
    const text = readFileSync(file, 'utf8');
    const data = JSON.parse(text) as FileShape;
    if (data.format !== 'oneport-directory/1') throw new Error(`${file}: not a oneport directory file`);
    for (const u of data.users) this.users.set(u.name, Object.freeze(u));
    for (const v of data.vms) this.vms.set(v.name, Object.freeze(v));
    this.keyRing = data.keys;
    this.ver = data.version;
    this.baseBytes = Buffer.byteLength(text);
  }

  /** Apply the log's complete lines newer than the base; cut a torn tail off the file. */
  private replay(logFile: string): void {
    if (!existsSync(logFile)) return;
    const buf = readFileSync(logFile);
    let good = 0;
    for (let at = 0; at < buf.length; ) {
      const nl = buf.indexOf(0x0a, at);
      if (nl < 0) break;
      let line: LogLine;
      try {
        line = JSON.parse(buf.subarray(at, nl).toString('utf8')) as LogLine;
      } catch {
        break;
      }
      if (typeof line.v !== 'number') break;
      if (line.v > this.ver) {
        if (line.k === 'keys') this.keyRing = line.d as KeyRing;
        else {
          const map = (line.k === 'user' ? this.users : this.vms) as { set(n: string, r: UserRecord & VmRecord): void; delete(n: string): boolean };
          if (line.d === undefined) map.delete(line.n!);
          else map.set(line.n!, Object.freeze(line.d) as UserRecord & VmRecord);
        }
        this.ver = line.v;
      }
      at = good = nl + 1;
    }
    if (good < buf.length) truncateSync(logFile, good);
    this.logBytes = good;
  }

  version(): number {
    return this.ver;
  }
  getUser(name: string): UserRecord | undefined {
    return this.users.get(name);
  }
  getVm(name: string): VmRecord | undefined {
    return this.vms.get(name);
  }
  listUsers(): readonly UserRecord[] {
    return [...this.users.values()];
  }
  listVms(): readonly VmRecord[] {
    return [...this.vms.values()];
  }
  vmsOnNode(node: string): VmRecord[] {
    return this.vms.onNode(node);
  }
  unsettledVms(node: string): VmRecord[] {
    return this.vms.unsettledOn(node);
  }
  vmsForUser(user: UserRecord): VmRecord[] {
    return this.vms.forUser(user);
  }
  keys(): KeyRing {
    return this.keyRing;
  }

  async putUser(user: UserRecord): Promise<void> {
    this.users.set(user.name, Object.freeze({ ...user }));
    await this.commit({ kind: 'user', name: user.name });
  }
  async deleteUser(name: string): Promise<boolean> {
    if (!this.users.delete(name)) return false;
    await this.commit({ kind: 'user', name });
    return true;
  }
  async putVm(vm: VmRecord, opts: PutVmOptions = {}): Promise<boolean> {
    if (opts.ifEpoch !== undefined && this.vms.get(vm.name)?.epoch !== opts.ifEpoch) return false;
    this.vms.set(vm.name, Object.freeze({ ...vm }));
    await this.commit({ kind: 'vm', name: vm.name });
    return true;
  }
  async putVms(vms: readonly VmRecord[], ifEpochs: readonly number[]): Promise<boolean[]> {
    if (vms.length !== ifEpochs.length) throw new RangeError('putVms: one expected epoch per VM');
    const out: boolean[] = [];
    for (const [i, vm] of vms.entries()) out.push(await this.putVm(vm, { ifEpoch: ifEpochs[i] }));
    return out;
  }
  async deleteVm(name: string): Promise<boolean> {
    if (!this.vms.delete(name)) return false;
    await this.commit({ kind: 'vm', name });
    return true;
  }
  async rotateKeys(): Promise<void> {
    const old = this.keyRing.current;
    this.keyRing = { current: newSigningKey(old.id + 1), previous: [old] };
    await this.commit({ kind: 'keys' });
  }

  private async commit(change: { kind: 'vm' | 'user'; name: string } | { kind: 'keys' }): Promise<void> {
    this.ver++;
    const ev = { ...change, version: this.ver } as DirectoryChange;
    // Readers see the change at once; the file follows in write order.
    this.emit('change', ev);
    if (!this.file) return;
    const line: LogLine =
      change.kind === 'keys'
        ? { v: this.ver, k: 'keys', d: this.keyRing }
        : { v: this.ver, k: change.kind, n: change.name, d: change.kind === 'user' ? this.users.get(change.name) : this.vms.get(change.name) };
    this.pending.push(`${JSON.stringify(line)}\n`);
    await this.enqueue(() => this.append());
  }

  /** Run `step` after every earlier write; a failure is the caller's, not the next writer's. */
  private enqueue(step: () => Promise<void>): Promise<void> {
    const next = this.saving.then(step);
    this.saving = next.catch(() => undefined);
    return next;
  }

  /** Append every pending line with one write and one fsync; compact when the log outgrew the base. */
  private async append(): Promise<void> {
    if (!this.pending.length) return;
    // No base yet (a first start that never flushed): write one, key ring included, rather than
    // a log that would replay onto a fresh key ring after a crash.
    if (!existsSync(this.file!)) return this.compact();
    const text = this.pending.join('');
    this.pending = [];
    if (!this.logFh) {
      mkdirSync(dirname(this.file!), { recursive: true, mode: 0o700 });
      this.logFh = await open(`${this.file!}.log`, 'a', 0o600);
    }
    await this.logFh.write(text);
    await this.logFh.datasync();
    this.logBytes += Buffer.byteLength(text);
    if (this.logBytes > Math.max(COMPACT_MIN_BYTES, this.baseBytes)) await this.compact();
  }

  /** A new base with everything (pending lines included), then an empty log. */
  private async compact(): Promise<void> {
    const file = this.file!;
    const text = this.serialise();
    await writeAtomic(file, text);
    this.baseBytes = Buffer.byteLength(text);
    this.pending = [];
    if (this.logFh || existsSync(`${file}.log`)) {
      this.logFh ??= await open(`${file}.log`, 'a', 0o600);
      await this.logFh.truncate(0);
      await this.logFh.datasync();
    }
    this.logBytes = 0;
  }

  private serialise(): string {
    const data: FileShape = {
      format: 'oneport-directory/1',
      version: this.ver,
      users: this.listUsers() as UserRecord[],
      vms: this.listVms() as VmRecord[],
      keys: this.keyRing,
    };
    return `${JSON.stringify(data, null, 2)}\n`;
  }

  /** Write the whole directory as the base now (first start; folds in the log). */
  async flush(): Promise<void> {
    if (!this.file) return;
    await this.enqueue(() => this.compact());
  }

  /** Compacts (a stopped node leaves just the base), then closes the log. */
  async close(): Promise<void> {
    if (this.file) await this.enqueue(async () => (this.logBytes > 0 || this.pending.length ? this.compact() : undefined)).catch(() => undefined);
    await this.saving;
    await this.logFh?.close();
    this.logFh = undefined;
    this.removeAllListeners();
  }
}

/** Replace `file` with `text` (mode 0600) so that a crash leaves the old or the new one, never half. */
export async function writeAtomic(file: string, text: string): Promise<void> {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}
