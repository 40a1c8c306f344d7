/**
 * The embedded directory: everything in memory, saved as one JSON file in the state folder
 * (mode 0600: it holds password hashes and signing keys). Writes are serialised and the file is
 * replaced atomically (write to a temporary file, fsync, rename), so a crash never leaves half a
 * directory behind.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, existsSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
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

  /** @param file where to persist; undefined keeps everything in memory (tests). */
  constructor(private readonly file?: string) {
    super();
    this.keyRing = { current: newSigningKey(1), previous: [] };
    if (file && existsSync(file)) this.load(file);
  }

  private load(file: string): void {
    const data = JSON.parse(readFileSync(file, 'utf8')) as FileShape;
    if (data.format !== 'oneport-directory/1') throw new Error(`${file}: not a oneport directory file`);
    for (const u of data.users) this.users.set(u.name, Object.freeze(u));
    for (const v of data.vms) this.vms.set(v.name, Object.freeze(v));
    this.keyRing = data.keys;
    this.ver = data.version;
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
    const file = this.file;
    // One snapshot per write keeps the file in write order. Whole-file rewrites cost O(size) per
    // change: fine for an embedded directory; clusters use Redis.
    const snapshot = this.serialise();
    const next = this.saving.then(() => writeAtomic(file, snapshot));
    this.saving = next.catch(() => undefined);
    await next;
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

  /** Write the current state even if nothing changed (first start). */
  async flush(): Promise<void> {
    if (!this.file) return;
    const file = this.file;
    const snapshot = this.serialise();
    const next = this.saving.then(() => writeAtomic(file, snapshot));
    this.saving = next.catch(() => undefined);
    await next;
  }

  async close(): Promise<void> {
    await this.saving;
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
