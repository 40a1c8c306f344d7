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
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, existsSync, truncateSync } from 'node:fs';
import { open, rename, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DirectoryView } from './view.js';
import { OneportError } from '../errors.js';
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

/** A change to the directory, applied and undone in memory around its save (MemoryDirectory.write). */
interface Mutation {
  line(version: number): LogLine;
  event: { kind: 'user' | 'vm'; name: string } | { kind: 'keys' };
  apply(): void;
  undo(): void;
}

/** The log is folded into the base once it is larger than the base and than this. */
const COMPACT_MIN_BYTES = 1 << 20; // 1 MiB

export function newSigningKey(id: number): SigningKey {
  return { id: id & 0xff, secret: randomBytes(32).toString('base64'), createdAt: Date.now() };
}

export class MemoryDirectory extends DirectoryView implements Directory {
  readonly kind = 'embedded' as const;
  private saving: Promise<void> = Promise.resolve();
  private logFh: FileHandle | undefined;
  private logBytes = 0;
  private baseBytes = 0;

  /** @param file where to persist; undefined keeps everything in memory (tests). */
  constructor(private readonly file?: string) {
    super({ current: newSigningKey(1), previous: [] });
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

  async putUser(user: UserRecord): Promise<void> {
    const rec = Object.freeze({ ...user });
    await this.write(() => this.change('user', user.name, this.users, rec));
  }
  async deleteUser(name: string): Promise<boolean> {
    return this.write(() => (this.users.has(name) ? this.change('user', name, this.users, undefined) : false));
  }
  async putVm(vm: VmRecord, opts: PutVmOptions = {}): Promise<boolean> {
    const rec = Object.freeze({ ...vm });
    return this.write(() => {
      if (opts.ifEpoch !== undefined && this.vms.get(vm.name)?.epoch !== opts.ifEpoch) return false;
      return this.change('vm', vm.name, this.vms, rec);
    });
  }
  async putVms(vms: readonly VmRecord[], ifEpochs: readonly number[]): Promise<boolean[]> {
    if (vms.length !== ifEpochs.length) throw new RangeError('putVms: one expected epoch per VM');
    const out: boolean[] = [];
    for (const [i, vm] of vms.entries()) out.push(await this.putVm(vm, { ifEpoch: ifEpochs[i] }));
    return out;
  }
  async deleteVm(name: string): Promise<boolean> {
    return this.write(() => (this.vms.get(name) !== undefined ? this.change('vm', name, this.vms, undefined) : false));
  }
  async rotateKeys(): Promise<void> {
    await this.write(() => {
      const before = this.keyRing;
      const old = before.current;
      return {
        line: (v: number): LogLine => ({ v, k: 'keys', d: this.keyRing }),
        event: { kind: 'keys' },
        apply: () => (this.keyRing = { current: newSigningKey(old.id + 1), previous: [old] }),
        undo: () => (this.keyRing = before),
      };
    });
  }

  /** Set (or delete, `rec` undefined) one record, undoably. */
  private change<R extends UserRecord | VmRecord>(
    kind: 'user' | 'vm',
    name: string,
    map: { get(n: string): R | undefined; set(n: string, r: R): unknown; delete(n: string): unknown },
    rec: R | undefined,
  ): Mutation {
    const before = map.get(name);
    const put = (r: R | undefined): void => {
      if (r === undefined) map.delete(name);
      else map.set(name, r);
    };
    return {
      line: (v) => ({ v, k: kind, n: name, ...(rec === undefined ? {} : { d: rec }) }),
      event: { kind, name },
      apply: () => put(rec),
      undo: () => put(before),
    };
  }

  /**
   * One change, in write order: applied, saved (log line appended and fsynced), then announced.
   * A change that cannot be saved (disk full) is undone before the error reaches the caller: a
   * write reported as failed never takes effect, now or at the next save. `plan` runs in turn,
   * so conditions (`ifEpoch`) see every earlier write; it returns false for "nothing to do".
   */
  private write(plan: () => Mutation | false): Promise<boolean> {
    return this.enqueue(async () => {
      const m = plan();
      if (m === false) return false;
      const before = this.ver;
      m.apply();
      this.ver = before + 1;
      if (this.file) {
        try {
          await this.append(`${JSON.stringify(m.line(this.ver))}\n`);
        } catch (e) {
          m.undo();
          this.ver = before;
          // Disk full, read-only, I/O error: the caller may retry once the operator made room.
          const code = (e as NodeJS.ErrnoException).code ?? 'error';
          throw new OneportError('ONEPORT_ERR_DIRECTORY_UNAVAILABLE', `the directory could not be saved in the state folder (${code}); nothing was changed`, { retryAfter: 5, cause: e });
        }
      }
      this.emit('change', { ...m.event, version: this.ver } as DirectoryChange);
      return true;
    });
  }

  /** Run `step` after every earlier write; a failure is the caller's, not the next writer's. */
  private enqueue<T>(step: () => Promise<T>): Promise<T> {
    const next = this.saving.then(step);
    this.saving = next.then(
      () => undefined,
      () => undefined,
    );
    return next;
  }

  /** Append one line with one write and one fsync; compact when the log outgrew the base. */
  private async append(text: string): Promise<void> {
    // No base yet (a first start that never flushed): write one, key ring included, rather than
    // a log that would replay onto a fresh key ring after a crash.
    if (!existsSync(this.file!)) return this.compact();
    if (!this.logFh) {
      mkdirSync(dirname(this.file!), { recursive: true, mode: 0o700 });
      this.logFh = await open(`${this.file!}.log`, 'a', 0o600);
    }
    const line = Buffer.from(text);
    const fh = this.logFh;
    const size = (await fh.stat()).size;
    try {
      // A full disk may take part of the line and report it as a short write, not an error.
      const { bytesWritten } = await fh.write(line);
      if (bytesWritten !== line.length) throw Object.assign(new Error(`short write to the change log (${bytesWritten} of ${line.length} bytes)`), { code: 'ENOSPC' });
      await fh.datasync();
    } catch (e) {
      // Take back what part of the line got in: a torn line would end the log there when it is
      // replayed, and every later line, acknowledged or not, would be lost with it.
      await fh.truncate(size).catch(() => undefined);
      throw e;
    }
    this.logBytes += line.length;
    // The change is on disk: a compaction that fails now loses nothing (the log still holds it).
    if (this.logBytes > Math.max(COMPACT_MIN_BYTES, this.baseBytes)) await this.compact().catch(() => undefined);
  }

  /** A new base with everything, then an empty log. */
  private async compact(): Promise<void> {
    const file = this.file!;
    const text = this.serialise();
    await writeAtomic(file, text);
    this.baseBytes = Buffer.byteLength(text);
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
    if (this.file) await this.enqueue(async () => (this.logBytes > 0 ? this.compact() : undefined)).catch(() => undefined);
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
