/**
 * Directory administration for the CLI: through the running gateway's control socket when one
 * is up (so its in-memory directory and the file stay one), else straight on the state folder's
 * directory file.
 */
import http from 'node:http';
import { existsSync } from 'node:fs';
import { OneportError, type ErrorCode } from './errors.js';
import { MemoryDirectory } from './directory/memory.js';
import { type Protocol, type PublicVm, type VmInput, type VmRecord, publicVmRecord } from './directory/directory.js';
import * as commands from './directory/commands.js';
import type { UserInput } from './directory/commands.js';
import { statePaths } from './state.js';

export interface Admin {
  readonly mode: 'running-gateway' | 'offline';
  putUser(name: string, input: UserInput): Promise<unknown>;
  deleteUser(name: string): Promise<void>;
  listUsers(): Promise<unknown[]>;
  putVm(vm: VmInput): Promise<unknown>;
  deleteVm(name: string): Promise<void>;
  listVms(): Promise<PublicVm[]>;
  /** Set (a string) or clear (null) a VM endpoint's console password. */
  setConsolePassword(name: string, protocol: Protocol, password: string | null): Promise<void>;
  ticket(user: string, vm: string, protocol?: string): Promise<Record<string, unknown>>;
  cluster(): Promise<unknown>;
  /** A one-time token for node `node` to join the cluster (cluster/join.ts). */
  joinToken(node: string, ttlSeconds?: number): Promise<{ token: string; node: string; expiresAt: string }>;
  /** Planned migration: the VM's owner becomes `node` (epoch + 1); routing follows at once. */
  moveVm(name: string, node: string): Promise<PublicVm>;
  /** A new ticket signing key; the previous one stays valid until the next rotation. */
  rotateKeys(): Promise<void>;
  /** Drain node `node` (this one or another of the cluster): it hands its clients over, then stops. */
  drainNode(node: string, moveVms: boolean): Promise<DrainAnswer>;
  /** GET /api/sessions: every live tunnel on every node, and which nodes answered. */
  sessions(): Promise<SessionList>;
  /** End one tunnel (and the rest of its console session on that node). */
  killSession(id: string): Promise<{ ended: number }>;
  /** End all of a user's sessions, on every node. */
  killUserSessions(name: string): Promise<{ ended: number; complete: boolean; nodes: NodeReport[] }>;
  close(): Promise<void>;
}

export interface DrainAnswer {
  readonly node: string;
  readonly started: boolean;
  readonly tunnels: number;
  readonly moveVms: boolean;
}

export interface NodeReport {
  readonly node: string;
  readonly state: string;
  readonly answered: boolean;
  readonly error?: string;
}

export interface SessionList {
  readonly sessions: ReadonlyArray<{
    id: string;
    user: string;
    vm: string;
    protocol: string;
    transport: string;
    entryNode: string;
    consoleNode: string;
    client: string;
    since: string;
    bytesToConsole: number;
    bytesToClient: number;
    session: string;
    parked: boolean;
    expiresAt?: string;
  }>;
  readonly nodes: readonly NodeReport[];
  readonly complete: boolean;
}

/**
 * The running gateway's control socket when it answers; else the directory file. A cluster node's
 * directory lives in Redis and its file is never read, so without a running node there is nothing
 * to edit offline: `opts.cluster` refuses that instead of "saving" into a file nobody reads.
 */
export async function openAdmin(stateRoot: string, opts: { cluster?: boolean } = {}): Promise<Admin> {
  const paths = statePaths(stateRoot);
  if (existsSync(paths.controlSocket) && (await reachable(paths.controlSocket))) return new ControlAdmin(paths.controlSocket);
  if (opts.cluster) {
    throw new Error('this node belongs to a cluster (cluster.redis is set): its directory is in Redis, so changes go through a running node. Start this node, or run the command on another node (with --state of that node).');
  }
  return new OfflineAdmin(new MemoryDirectory(paths.directory));
}

function reachable(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/healthz', method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

class ControlAdmin implements Admin {
  readonly mode = 'running-gateway' as const;
  constructor(private readonly socketPath: string) {}

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const text = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: text === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const parsed = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { error?: { code: ErrorCode; message: string } };
            if ((res.statusCode ?? 500) >= 400) reject(new OneportError(parsed.error?.code ?? 'ONEPORT_ERR_INTERNAL', parsed.error?.message));
            else resolve(parsed as T);
          });
        },
      );
      req.on('error', reject);
      req.end(text);
    });
  }

  putUser(name: string, input: UserInput): Promise<unknown> {
    return this.call('PUT', `/api/users/${encodeURIComponent(name)}`, input);
  }
  async deleteUser(name: string): Promise<void> {
    await this.call('DELETE', `/api/users/${encodeURIComponent(name)}`);
  }
  listUsers(): Promise<unknown[]> {
    return this.call('GET', '/api/users');
  }
  putVm(vm: VmInput): Promise<unknown> {
    const { name, ...rest } = vm;
    return this.call('PUT', `/api/vms/${encodeURIComponent(name)}`, rest);
  }
  async deleteVm(name: string): Promise<void> {
    await this.call('DELETE', `/api/vms/${encodeURIComponent(name)}`);
  }
  listVms(): Promise<PublicVm[]> {
    return this.call('GET', '/api/vms');
  }
  async setConsolePassword(name: string, protocol: Protocol, password: string | null): Promise<void> {
    await this.call('PUT', `/api/vms/${encodeURIComponent(name)}/console-password`, { protocol, password });
  }
  ticket(user: string, vm: string, protocol?: string): Promise<Record<string, unknown>> {
    return this.call('POST', '/api/tickets', { user, vm, ...(protocol ? { protocol } : {}) });
  }
  cluster(): Promise<unknown> {
    return this.call('GET', '/api/cluster');
  }
  joinToken(node: string, ttlSeconds?: number): Promise<{ token: string; node: string; expiresAt: string }> {
    return this.call('POST', '/api/cluster/join-tokens', { node, ...(ttlSeconds !== undefined ? { ttlSeconds } : {}) });
  }
  moveVm(name: string, node: string): Promise<PublicVm> {
    return this.call('POST', `/api/vms/${encodeURIComponent(name)}/move`, { node });
  }
  drainNode(node: string, moveVms: boolean): Promise<DrainAnswer> {
    return this.call('POST', `/api/nodes/${encodeURIComponent(node)}/drain`, { moveVms });
  }
  async rotateKeys(): Promise<void> {
    await this.call('POST', '/api/keys/rotate', {});
  }
  sessions(): Promise<SessionList> {
    return this.call('GET', '/api/sessions');
  }
  killSession(id: string): Promise<{ ended: number }> {
    return this.call('DELETE', `/api/sessions/${encodeURIComponent(id)}`);
  }
  killUserSessions(name: string): Promise<{ ended: number; complete: boolean; nodes: NodeReport[] }> {
    return this.call('DELETE', `/api/users/${encodeURIComponent(name)}/sessions`);
  }
  async close(): Promise<void> {}
}

class OfflineAdmin implements Admin {
  readonly mode = 'offline' as const;
  constructor(private readonly dir: MemoryDirectory) {}

  putUser(name: string, input: UserInput): Promise<unknown> {
    return commands.putUser(this.dir, name, input);
  }
  deleteUser(name: string): Promise<void> {
    return commands.deleteUser(this.dir, name);
  }
  async listUsers(): Promise<unknown[]> {
    return this.dir.listUsers().map(commands.publicUser);
  }
  putVm(input: VmInput): Promise<unknown> {
    return commands.putVm(this.dir, input);
  }
  deleteVm(name: string): Promise<void> {
    return commands.deleteVm(this.dir, name);
  }
  async listVms(): Promise<PublicVm[]> {
    return this.dir.listVms().map(publicVmRecord);
  }
  async setConsolePassword(name: string, protocol: Protocol, password: string | null): Promise<void> {
    await commands.setConsolePassword(this.dir, name, { protocol, password });
  }
  async ticket(): Promise<Record<string, unknown>> {
    throw new Error('tickets are issued by a running gateway: start it with `oneport serve` (same --state)');
  }
  async cluster(): Promise<unknown> {
    throw new Error('the gateway is not running');
  }
  async joinToken(): Promise<{ token: string; node: string; expiresAt: string }> {
    throw new Error('join tokens are minted by a running cluster node: start it with `oneport serve` (same --state)');
  }
  async moveVm(name: string, node: string): Promise<PublicVm> {
    // No cluster membership to check: offline, the directory file is the whole world.
    return publicVmRecord(await commands.moveVm(this.dir, name, node));
  }
  async rotateKeys(): Promise<void> {
    await this.dir.rotateKeys();
  }
  async drainNode(): Promise<DrainAnswer> {
    throw new Error('the gateway is not running: nothing to drain');
  }
  async sessions(): Promise<SessionList> {
    throw new Error('the gateway is not running: no sessions');
  }
  async killSession(): Promise<{ ended: number }> {
    throw new Error('the gateway is not running: no sessions');
  }
  async killUserSessions(): Promise<{ ended: number; complete: boolean; nodes: NodeReport[] }> {
    throw new Error('the gateway is not running: no sessions');
  }
  async close(): Promise<void> {
    await this.dir.close();
  }
}
