/**
 * Directory commands: the changes an administrator makes (add or change a user, remove one, add
 * or replace a VM, move one to another node, remove one). One implementation for both ways in:
 * the JSON API's admin routes (http/api.ts) and the CLI's offline path on the directory file
 * (admin.ts), so that a command validates and answers the same whether or not a gateway runs.
 *
 * Each command validates its input with the directory's schemas, builds the record, writes it
 * through the `Directory` interface and returns what the API answers; failures are
 * OneportErrors with the API's codes and messages.
 */
import { z } from 'zod';
import { OneportError, validationError } from '../errors.js';
import { hashPassword } from '../auth/passwords.js';
import {
  type Directory,
  type UserRecord,
  type VmRecord,
  PASSWORD_PROTOCOLS,
  ROLES,
  consolePasswordSchema,
  maxSessionsSchema,
  protocolSchema,
  toVmRecord,
  userNameSchema,
  vmSchema,
} from './directory.js';

/** PUT /api/users/<name>: every field optional; a new user needs a password. */
export const userInputSchema = z
  .object({
    password: z.string().min(8).max(1024).optional(),
    roles: z.array(z.enum(ROLES)).optional(),
    groups: z.array(z.string().min(1).max(64)).optional(),
    /** Console sessions at once, cluster-wide; 0 = unlimited; null = back to the configured default. */
    maxSessions: maxSessionsSchema.nullable().optional(),
  })
  .strict();
export type UserInput = z.input<typeof userInputSchema>;

/** POST /api/vms/<vm>/move. */
export const moveSchema = z.object({ node: z.string().min(1).max(63) }).strict();

/** A user as the API shows it: never the password hash. */
export interface PublicUser {
  readonly name: string;
  readonly roles: UserRecord['roles'];
  readonly groups: UserRecord['groups'];
  readonly maxSessions?: number;
}

export function publicUser(u: UserRecord): PublicUser {
  return { name: u.name, roles: u.roles, groups: u.groups, ...(u.maxSessions !== undefined ? { maxSessions: u.maxSessions } : {}) };
}

function parse<T>(schema: z.ZodType<T>, input: unknown): T {
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw validationError(parsed.error);
  return parsed.data;
}

/** A valid user name, or ONEPORT_ERR_VALIDATION (the API checks it before reading the body). */
export function checkUserName(name: string): string {
  return parse(userNameSchema, name);
}

/** Add a user, or change the fields given. A new password logs the user out everywhere. */
export async function putUser(dir: Directory, name: string, input: unknown): Promise<PublicUser> {
  const userName = checkUserName(name);
  const body = parse(userInputSchema, input);
  const existing = dir.getUser(userName);
  if (!existing && body.password === undefined) throw new OneportError('ONEPORT_ERR_VALIDATION', 'a new user needs a password');
  const user: UserRecord = {
    name: userName,
    passwordHash: body.password === undefined ? (existing?.passwordHash ?? '') : await hashPassword(body.password),
    roles: body.roles ?? existing?.roles ?? ['user'],
    groups: body.groups ?? existing?.groups ?? [],
    sessionsNotBefore: body.password === undefined ? (existing?.sessionsNotBefore ?? 0) : Date.now(),
  };
  const maxSessions = body.maxSessions === undefined ? existing?.maxSessions : (body.maxSessions ?? undefined);
  const record: UserRecord = maxSessions === undefined ? user : { ...user, maxSessions };
  await dir.putUser(record);
  return publicUser(record);
}

export async function deleteUser(dir: Directory, name: string): Promise<void> {
  if (!(await dir.deleteUser(name))) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'no such user');
}

/**
 * Add or replace a VM; published ports default to the protocols' well-known ones. Console
 * passwords are never shown, so a record read and written back must not lose them: an endpoint
 * without `password` keeps the one its protocol had; `password: null` clears it.
 */
export async function putVm(dir: Directory, input: unknown): Promise<VmRecord> {
  const vm = toVmRecord(parse(vmSchema, withKeptPasswords(dir, input)));
  await dir.putVm(vm);
  return vm;
}

/** PUT /api/vms/<vm>/console-password: set (a string) or clear (null) one endpoint's console password. */
export const consolePasswordInputSchema = z
  .object({
    protocol: protocolSchema.refine((p) => PASSWORD_PROTOCOLS.includes(p), { message: 'console passwords are for vnc and spice endpoints' }),
    password: consolePasswordSchema.nullable(),
  })
  .strict();

/** Set or clear the console password of a VM's endpoint; the rest of the record stays. */
export async function setConsolePassword(dir: Directory, name: string, input: unknown): Promise<VmRecord> {
  const body = parse(consolePasswordInputSchema, input);
  const vm = dir.getVm(name);
  if (!vm) throw new OneportError('ONEPORT_ERR_UNKNOWN_VM');
  if (!vm.endpoints.some((e) => e.protocol === body.protocol)) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
  const endpoints = vm.endpoints.map((e) => {
    if (e.protocol !== body.protocol) return e;
    const { password: _old, ...rest } = e;
    return body.password === null ? rest : { ...rest, password: body.password };
  });
  const next: VmRecord = { ...vm, endpoints };
  // Compare-and-set on the epoch read: a failover meanwhile is a conflict, not a lost change.
  if (!(await dir.putVm(next, { ifEpoch: vm.epoch }))) throw new OneportError('ONEPORT_ERR_CONFLICT');
  return next;
}

/** The input with each endpoint's stored console password filled in where it names none (null: none). */
function withKeptPasswords(dir: Directory, input: unknown): unknown {
  if (typeof input !== 'object' || input === null) return input;
  const { name, endpoints } = input as { name?: unknown; endpoints?: unknown };
  if (!Array.isArray(endpoints)) return input;
  const stored = typeof name === 'string' ? dir.getVm(name) : undefined;
  const kept = endpoints.map((e: unknown) => {
    if (typeof e !== 'object' || e === null) return e;
    const given = e as Record<string, unknown>;
    if (given.password === null) {
      const { password: _cleared, ...rest } = given;
      return rest;
    }
    if ('password' in given) return given;
    const password = stored?.endpoints.find((s) => s.protocol === given.protocol)?.password;
    return password === undefined ? given : { ...given, password };
  });
  return { ...input, endpoints: kept };
}

export async function deleteVm(dir: Directory, name: string): Promise<void> {
  if (!(await dir.deleteVm(name))) throw new OneportError('ONEPORT_ERR_UNKNOWN_VM');
}

export interface MoveOptions {
  /**
   * In a cluster: the state of member `node` ('up', or why not), undefined if the cluster has never
   * heard of it. A move goes only to an up member. Unset: any node.
   */
  readonly nodeState?: ((node: string) => string | undefined) | undefined;
}

/**
 * Planned migration: `node` owns the VM from now on, with the epoch bumped. Written
 * compare-and-set on the epoch read, so a concurrent change is ONEPORT_ERR_CONFLICT, not lost.
 */
export async function moveVm(dir: Directory, name: string, nodeIn: string, opts: MoveOptions = {}): Promise<VmRecord> {
  const { node } = parse(moveSchema, { node: nodeIn });
  const vm = dir.getVm(name);
  if (!vm) throw new OneportError('ONEPORT_ERR_UNKNOWN_VM');
  if (opts.nodeState) {
    const state = opts.nodeState(node);
    if (state === undefined) throw new OneportError('ONEPORT_ERR_VALIDATION', `node ${node} is not a member of the cluster`);
    // A known member between heartbeats (right after a Redis outage, a restart) is a passing state.
    if (state !== 'up') throw new OneportError('ONEPORT_ERR_NODE_NOT_UP', `node ${node} is ${state}, not up: try again once its heartbeat is back`, { retryAfter: 2 });
  }
  // The replica stays where it was, unless the VM moves onto it (then the old owner takes its place).
  const moved: VmRecord = { ...vm, node, replica: vm.replica === node ? vm.node : vm.replica, epoch: vm.epoch + 1 };
  if (!(await dir.putVm(moved, { ifEpoch: vm.epoch }))) throw new OneportError('ONEPORT_ERR_CONFLICT');
  return moved;
}
