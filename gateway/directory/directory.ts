/**
 * The directory: users, VMs and the ticket signing keys. The data path reads it synchronously
 * (an in-memory copy, never a network round trip per tunnel); writes are async because the
 * cluster implementation (Redis, next issue) executes them remotely. Every implementation emits
 * 'change' after a write is visible to readers.
 */
import type { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { z } from 'zod';

export const PROTOCOLS = ['rdp', 'vnc', 'spice'] as const;
export type Protocol = (typeof PROTOCOLS)[number];
export const protocolSchema = z.enum(PROTOCOLS);

export const VM_STATES = ['running', 'recovering', 'migrating', 'down'] as const;
export type VmState = (typeof VM_STATES)[number];

export const ROLES = ['user', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** Well-known ports: what a client dials when it does not know better (CONTRACT section 3). */
export const WELL_KNOWN_PORT: Readonly<Record<Protocol, number>> = { rdp: 3389, vnc: 5900, spice: 5900 };

/**
 * VM names are DNS names (lowercase labels joined by dots) so that `<ticket>.<vm>` is a valid host
 * name for clients that resolve nothing themselves, and never IP-address-shaped.
 */
const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const VM_NAME_RE = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`);
export function isValidVmName(name: string): boolean {
  return name.length <= 200 && VM_NAME_RE.test(name) && isIP(name) === 0 && !/^[0-9.]+$/.test(name);
}
export const vmNameSchema = z.string().refine(isValidVmName, {
  message: 'VM names are lowercase DNS names (letters, digits, hyphens, dots), not addresses',
});
export const userNameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/, {
  message: 'user names are 1-64 letters, digits, dot, underscore, @ or hyphen',
});
const hostSchema = z.string().min(1).max(253).regex(/^[A-Za-z0-9.:_-]+$/, { message: 'a host name or IP address' });
const portSchema = z.number().int().min(1).max(65535);

/** Longest console password (UTF-8 bytes): spice-server sets none longer; VNC uses the first 8. */
export const CONSOLE_PASSWORD_MAX_BYTES = 60;
/** A console password: what the gateway answers the console with (console-handshake.ts). */
export const consolePasswordSchema = z
  .string()
  .min(1)
  .refine((p) => Buffer.byteLength(p, 'utf8') <= CONSOLE_PASSWORD_MAX_BYTES && !p.includes('\0'), {
    message: `a console password is 1-${CONSOLE_PASSWORD_MAX_BYTES} bytes (UTF-8) without NUL`,
  });
/** The protocols whose console handshake the gateway can answer with a stored password. */
export const PASSWORD_PROTOCOLS: readonly Protocol[] = ['vnc', 'spice'];

export const endpointSchema = z
  .object({
    protocol: protocolSchema,
    /** Where the console listens: dialled by the gateway, never shown to clients. */
    host: hostSchema,
    port: portSchema,
    /** The port clients name in CONNECT; defaults to the protocol's well-known port. */
    publishedPort: portSchema.optional(),
    /**
     * The console's own password (VNC Authentication, SPICE ticket). The gateway answers the
     * console with it; users never see it. Never returned by the API, never logged.
     */
    password: consolePasswordSchema.optional(),
  })
  .refine((e) => e.password === undefined || PASSWORD_PROTOCOLS.includes(e.protocol), {
    message: 'console passwords are for vnc and spice endpoints',
    path: ['password'],
  });
export type EndpointInput = z.input<typeof endpointSchema>;
export interface Endpoint {
  readonly protocol: Protocol;
  readonly host: string;
  readonly port: number;
  readonly publishedPort: number;
  readonly password?: string | undefined;
}

/** setTimeout's bound: longer waits would fire at once. About 24.8 days. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
const policyMsSchema = z.number().int().min(0).max(MAX_TIMER_MS);
const groupNameSchema = z.string().min(1).max(64);
/** Most sessions a cap can name (user or VM); 0 = unlimited. */
export const maxSessionsSchema = z.number().int().min(0).max(100_000);

/** Session controls for a VM's users (0 = unlimited / never), enforced by the gateway. */
export const sessionPolicySchema = z
  .object({
    /** A console session ends this long after it began (WebSocket close 4008), parked time included. */
    maxSessionMs: policyMsSchema.optional(),
    /** A tunnel with no bytes either way for this long ends (overrides tunnel.idleTimeoutMs). */
    idleTimeoutMs: policyMsSchema.optional(),
  })
  .strict();
export const vmPolicySchema = sessionPolicySchema
  .extend({
    /**
     * Per-group overrides: a user in one of these groups gets the group's value for each field it
     * sets (in several: the most generous, 0 = unlimited counting as the most generous).
     */
    groups: z.record(groupNameSchema, sessionPolicySchema).optional(),
  })
  .strict();
export interface SessionPolicy {
  readonly maxSessionMs?: number | undefined;
  readonly idleTimeoutMs?: number | undefined;
}
export interface VmPolicy extends SessionPolicy {
  readonly groups?: Readonly<Record<string, SessionPolicy>> | undefined;
}

export const vmSchema = z
  .object({
    name: vmNameSchema,
    /** Node that owns the VM (runs its console). */
    node: z.string().min(1).max(63),
    replica: z.string().min(1).max(63).optional(),
    state: z.enum(VM_STATES).default('running'),
    /** Bumped whenever the VM changes hands (cluster issue). */
    epoch: z.number().int().nonnegative().default(0),
    endpoints: z.array(endpointSchema).min(1),
    users: z.array(userNameSchema).default([]),
    groups: z.array(groupNameSchema).default([]),
    /** Session controls for this VM's users (maximum session time, idle timeout). */
    policy: vmPolicySchema.optional(),
    /** Console sessions open on this VM at once, cluster-wide; 0 = unlimited. @default limits.maxSessionsPerVm */
    maxSessions: maxSessionsSchema.optional(),
    /** Native RDP clients (the ticket in clear text before TLS) may reach this VM; config nativeRdp.enabled still applies. @default true */
    nativeRdp: z.boolean().optional(),
    /**
     * Check that a tunnel's first bytes are the endpoint's protocol (console-handshake.ts): false
     * turns the check off for this VM. @default tunnel.protocolCheck
     */
    protocolCheck: z.boolean().optional(),
  })
  .strict()
  .refine((v) => new Set(v.endpoints.map((e) => e.protocol)).size === v.endpoints.length, {
    message: 'at most one endpoint per protocol',
  });
export type VmInput = z.input<typeof vmSchema>;
export interface VmRecord {
  readonly name: string;
  readonly node: string;
  readonly replica?: string | undefined;
  readonly state: VmState;
  readonly epoch: number;
  readonly endpoints: readonly Endpoint[];
  readonly users: readonly string[];
  readonly groups: readonly string[];
  readonly policy?: VmPolicy | undefined;
  /** Console sessions on this VM at once, cluster-wide; 0 = unlimited; unset: limits.maxSessionsPerVm. */
  readonly maxSessions?: number | undefined;
  /** false: native RDP clients are refused for this VM (RD Gateway, CONNECT and WebSocket still work); unset: allowed. */
  readonly nativeRdp?: boolean | undefined;
  /** Check the first bytes against the protocol; unset: tunnel.protocolCheck. */
  readonly protocolCheck?: boolean | undefined;
}

export interface UserRecord {
  readonly name: string;
  /** scrypt hash in PHC-like form, see auth/passwords.ts. */
  readonly passwordHash: string;
  readonly roles: readonly Role[];
  readonly groups: readonly string[];
  /** Sessions issued before this time (ms) are revoked: "log out everywhere", password change. */
  readonly sessionsNotBefore: number;
  /** Console sessions this user may have open at once, cluster-wide; 0 = unlimited; unset: limits.maxSessionsPerUser. */
  readonly maxSessions?: number | undefined;
}

export interface SigningKey {
  /** 0-255, carried in tickets and tokens so rotation can keep the previous key valid. */
  readonly id: number;
  /** 32 random bytes, base64. */
  readonly secret: string;
  readonly createdAt: number;
}

export interface KeyRing {
  readonly current: SigningKey;
  readonly previous: readonly SigningKey[];
}

export type DirectoryChange =
  | { readonly kind: 'vm'; readonly name: string; readonly version: number }
  | { readonly kind: 'user'; readonly name: string; readonly version: number }
  | { readonly kind: 'keys'; readonly version: number };

export interface PutVmOptions {
  /** Compare-and-set: write only if the stored VM exists with this epoch. */
  readonly ifEpoch?: number | undefined;
  /**
   * Skip the leader fence (cluster): for the one write a non-leader makes, the owner reporting
   * that a recovered VM's console answers; always paired with `ifEpoch`.
   */
  readonly unfenced?: boolean | undefined;
}

export interface Directory extends EventEmitter {
  readonly kind: 'embedded' | 'redis';
  /** Monotonic version of what readers see. */
  version(): number;
  getUser(name: string): UserRecord | undefined;
  getVm(name: string): VmRecord | undefined;
  listUsers(): readonly UserRecord[];
  /** Every VM: O(directory). Per-node and per-user questions have their indexed calls below. */
  listVms(): readonly VmRecord[];
  /** The VMs `node` owns, O(their number). */
  vmsOnNode(node: string): VmRecord[];
  /** The VMs `node` owns that are `recovering` or `down` (the cluster's recovery loop), O(their number). */
  unsettledVms(node: string): VmRecord[];
  /** The VMs assigned to `user` by name or through a group (isAssigned), O(their number), by name. */
  vmsForUser(user: UserRecord): VmRecord[];
  keys(): KeyRing;
  putUser(user: UserRecord): Promise<void>;
  deleteUser(name: string): Promise<boolean>;
  /** Returns false only when `opts.ifEpoch` is given and the stored VM's epoch differs (nothing written). */
  putVm(vm: VmRecord, opts?: PutVmOptions): Promise<boolean>;
  /**
   * Write several VMs, each compare-and-set on its stored epoch (`ifEpochs[i]`), leader-fenced,
   * as few changes as possible (cluster: one feed entry per batch of up to 500, not one per VM).
   * Returns, per VM, whether it was written.
   */
  putVms(vms: readonly VmRecord[], ifEpochs: readonly number[]): Promise<boolean[]>;
  deleteVm(name: string): Promise<boolean>;
  /** Make a new current key; the old one stays valid as `previous`. */
  rotateKeys(): Promise<void>;
  close(): Promise<void>;
}

/** Normalise validated input into a record (defaults for published ports). */
export function toVmRecord(input: z.output<typeof vmSchema>): VmRecord {
  return {
    ...input,
    endpoints: input.endpoints.map((e) => ({ ...e, publishedPort: e.publishedPort ?? WELL_KNOWN_PORT[e.protocol] })),
  };
}

/** An endpoint as the API shows it: never the password, only whether one is set. */
export function publicEndpoint(e: Endpoint): Omit<Endpoint, 'password'> & { readonly passwordSet?: true } {
  const { password, ...rest } = e;
  return password === undefined ? rest : { ...rest, passwordSet: true };
}

/** A VM as the API shows it (GET/PUT /api/vms): console passwords left out. */
export type PublicVm = Omit<VmRecord, 'endpoints'> & { readonly endpoints: ReturnType<typeof publicEndpoint>[] };
export function publicVmRecord(vm: VmRecord): PublicVm {
  return { ...vm, endpoints: vm.endpoints.map(publicEndpoint) };
}

export function isAssigned(vm: VmRecord, user: UserRecord): boolean {
  if (vm.users.includes(user.name)) return true;
  return vm.groups.some((g) => user.groups.includes(g));
}

/** A user's VMs, sorted by name: the portal's desktop list. */
export function vmsForUser(dir: Directory, user: UserRecord): VmRecord[] {
  return dir.vmsForUser(user).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}
