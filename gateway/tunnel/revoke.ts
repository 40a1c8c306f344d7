/**
 * Revocation reaches live tunnels: when the directory says a user's access ended, their tunnels
 * and parked sessions here end at once (WebSocket 4003, CONNECT closed), on every node, because
 * every node's directory (or mirror) sees the same change. Access ends when:
 * - the user is deleted;
 * - their password changed (`sessionsNotBefore` moved past the tunnel's start: "log out everywhere");
 * - the VM is deleted, or no longer assigned to them (users, groups, or the user's groups changed).
 * Hop tunnels are left to the entry node, which holds the user's side and closes the hop.
 */
import { type Directory, isAssigned } from '../directory/directory.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { Tunnel, TunnelRegistry } from './registry.js';

export interface RevokeDeps {
  readonly dir: Directory;
  readonly tunnels: TunnelRegistry;
  readonly metrics: Metrics;
  readonly log: Logger;
}

export type RevokeReason = 'user-deleted' | 'password-changed' | 'vm-deleted' | 'unassigned' | 'logged-out' | 'terminated';

/** Why `t` may no longer run, by the directory as it is now; undefined when it may. */
export function revocationOf(dir: Directory, t: Tunnel): RevokeReason | undefined {
  if (t.transport === 'hop') return undefined;
  const user = dir.getUser(t.user);
  if (!user) return 'user-deleted';
  if (user.sessionsNotBefore > t.startedAt) return 'password-changed';
  const vm = dir.getVm(t.vm);
  if (!vm) return 'vm-deleted';
  if (!isAssigned(vm, user)) return 'unassigned';
  return undefined;
}

/** End `tunnels` for `reason`: close code 4003, one log line, counted. Returns how many. */
export function revokeTunnels(deps: Pick<RevokeDeps, 'metrics' | 'log'>, tunnels: readonly Tunnel[], reason: RevokeReason): number {
  for (const t of tunnels) t.pump.close('revoked', JSON.stringify({ code: 'ONEPORT_ERR_FORBIDDEN', reason }));
  if (tunnels.length > 0) {
    deps.metrics.revoked.inc({ reason }, tunnels.length);
    const users = [...new Set(tunnels.map((t) => t.user))];
    deps.log.info({ event: 'tunnels-revoked', reason, tunnels: tunnels.length, users, vms: [...new Set(tunnels.map((t) => t.vm))] }, `access ended (${reason}): ${tunnels.length} tunnel(s) closed`);
  }
  return tunnels.length;
}

/**
 * An admin ends console sessions (DELETE /api/sessions/<id>, DELETE /api/users/<name>/sessions):
 * `tunnels` and every other tunnel of their sessions held here (a SPICE client's channels) close
 * with 4003 `{code: ONEPORT_ERR_FORBIDDEN, reason: terminated}`, and the sessions' resume tokens
 * stop working (`endSession`), so a client cannot come straight back into them. Returns how many
 * tunnels ended.
 */
export async function terminateSessions(
  deps: Pick<RevokeDeps, 'tunnels' | 'metrics' | 'log'> & { readonly endSession: (sessionId: string) => Promise<void> },
  tunnels: readonly Tunnel[],
): Promise<number> {
  const sessions = new Set(tunnels.map((t) => t.sessionId));
  const all = deps.tunnels.clientTunnels().filter((t) => sessions.has(t.sessionId));
  // Ends them first: a session whose resume token cannot be revoked now (Redis away) still ends.
  const n = revokeTunnels(deps, all, 'terminated');
  const results = await Promise.allSettled([...sessions].map((s) => deps.endSession(s)));
  const failed = results.filter((r) => r.status === 'rejected').length;
  if (failed > 0) deps.log.warn({ event: 'session-end-unrecorded', sessions: failed }, `${failed} terminated session(s): their resume tokens could not be revoked (they expire on their own)`);
  return n;
}

/** Check the tunnels a directory change may concern. */
function recheck(deps: RevokeDeps, affected: readonly Tunnel[]): void {
  // A directory back at version 0 lost its data (Redis restarted empty, `reseed: false`): that is
  // no admin's decision, and ending every tunnel for it would turn a storage fault into an outage.
  if (deps.dir.version() === 0) return;
  const byReason = new Map<RevokeReason, Tunnel[]>();
  for (const t of affected) {
    const why = revocationOf(deps.dir, t);
    if (why) byReason.set(why, [...(byReason.get(why) ?? []), t]);
  }
  for (const [why, ts] of byReason) revokeTunnels(deps, ts, why);
}

/** An API session was logged out (here or on another node): end the tunnels its credentials opened. */
export function revokeApiSession(deps: Pick<RevokeDeps, 'tunnels' | 'metrics' | 'log'>, sid: string): number {
  return revokeTunnels(deps, deps.tunnels.clientTunnels().filter((t) => t.apiSession === sid), 'logged-out');
}

/** Follow the directory for the node's life; returns the function that stops it. */
export function followRevocations(deps: RevokeDeps): () => void {
  const onChange = (c: { kind: string; name?: string }): void => {
    if (c.name === undefined) return;
    if (c.kind === 'user') recheck(deps, deps.tunnels.byUser(c.name));
    else if (c.kind === 'vm') recheck(deps, deps.tunnels.byVm(c.name));
  };
  // After a resync anything may have changed.
  const onResync = (): void => recheck(deps, deps.tunnels.list());
  deps.dir.on('change', onChange);
  deps.dir.on('resync', onResync);
  return () => {
    deps.dir.removeListener('change', onChange);
    deps.dir.removeListener('resync', onResync);
  };
}
