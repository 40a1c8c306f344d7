/**
 * A directory served from a DirectoryMirror (mirror.ts): the Redis directory's own mirror
 * (redis.ts) and a worker's copy of its primary's (workers/fed-directory.ts). Reads are the
 * mirror's, synchronous; a write resolves once the mirror shows it (read-your-writes).
 */
import { EventEmitter } from 'node:events';
import type { KeyRing, UserRecord, VmRecord } from './directory.js';
import type { DirectoryMirror } from './mirror.js';

export abstract class MirroredDirectory extends EventEmitter {
  private readonly waiters = new Set<{ version: number; resolve: () => void }>();

  constructor(protected readonly mirror: DirectoryMirror) {
    super();
  }

  version(): number {
    return this.mirror.version;
  }
  getUser(name: string): UserRecord | undefined {
    return this.mirror.getUser(name);
  }
  getVm(name: string): VmRecord | undefined {
    return this.mirror.getVm(name);
  }
  listUsers(): readonly UserRecord[] {
    return this.mirror.listUsers();
  }
  listVms(): readonly VmRecord[] {
    return this.mirror.listVms();
  }
  vmsOnNode(node: string): VmRecord[] {
    return this.mirror.vmsOnNode(node);
  }
  unsettledVms(node: string): VmRecord[] {
    return this.mirror.unsettledVms(node);
  }
  vmsForUser(user: UserRecord): VmRecord[] {
    return this.mirror.vmsForUser(user);
  }
  keys(): KeyRing {
    const ring = this.mirror.keys();
    // A mirror serves only once a key ring is loaded, and never drops one.
    if (!ring) throw new Error('directory: no signing keys loaded');
    return ring;
  }

  /**
   * Resolves once the mirror shows version `v`, or after `timeoutMs` (`late` is told): the write
   * is done either way, and the mirror catches up on its own.
   */
  protected awaitVersion(v: number, timeoutMs: number, late?: () => void): Promise<void> {
    if (this.mirror.version >= v) return Promise.resolve();
    return new Promise((resolve) => {
      const w = {
        version: v,
        resolve: () => {
          clearTimeout(timer);
          this.waiters.delete(w);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        late?.();
        w.resolve();
      }, timeoutMs);
      this.waiters.add(w);
    });
  }

  /** Wake the writes the mirror now shows (all of them: closing). */
  protected wakeWaiters(all = false): void {
    for (const w of [...this.waiters]) if (all || w.version <= this.mirror.version) w.resolve();
  }
}
