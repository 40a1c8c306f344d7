/**
 * The in-memory directory readers see: users, VMs (indexed, vm-table.ts), the key ring and the
 * version. Shared by the embedded directory (memory.ts), which writes and saves it, and a worker's
 * replica of it (workers/remote.ts), which the primary's changes update.
 */
import { EventEmitter } from 'node:events';
import { VmTable } from './vm-table.js';
import type { KeyRing, UserRecord, VmRecord } from './directory.js';

export abstract class DirectoryView extends EventEmitter {
  protected readonly users = new Map<string, UserRecord>();
  protected readonly vms = new VmTable<VmRecord>((vm) => vm);
  protected ver = 0;

  constructor(protected keyRing: KeyRing) {
    super();
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
}
