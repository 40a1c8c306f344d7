/**
 * Session controls (security issue, "Session controls"), as pure functions of the directory's
 * records and the configured defaults: how long a console session may last and stay idle, and how
 * many sessions a user and a VM may have open at once. The broker applies them (broker.ts), the
 * caps are counted by session-caps.ts.
 *
 * Precedence, per field: the VM's per-group override for a group the user is in (several: the
 * most generous, 0 = unlimited being the most generous), else the VM's own value, else the
 * configured default. Caps: the user's record, else limits.maxSessionsPerUser; the VM's record,
 * else limits.maxSessionsPerVm. 0 always means unlimited (or, for the idle timeout, never).
 */
import type { SessionPolicy, UserRecord, VmRecord } from '../directory/directory.js';

export interface PolicyDefaults {
  /** config tunnel.idleTimeoutMs */
  readonly idleTimeoutMs: number;
  /** config tunnel.maxSessionMs */
  readonly maxSessionMs: number;
}

export interface CapDefaults {
  /** config limits.maxSessionsPerUser */
  readonly maxSessionsPerUser: number;
  /** config limits.maxSessionsPerVm */
  readonly maxSessionsPerVm: number;
}

export interface EffectivePolicy {
  readonly idleTimeoutMs: number;
  readonly maxSessionMs: number;
}

export interface SessionCapValues {
  readonly user: number;
  readonly vm: number;
}

/** 0 (unlimited) is the most generous; otherwise the largest. */
function mostGenerous(values: readonly number[]): number {
  return values.includes(0) ? 0 : Math.max(...values);
}

export function effectivePolicy(vm: VmRecord, user: Pick<UserRecord, 'groups'>, defaults: PolicyDefaults): EffectivePolicy {
  const groups = vm.policy?.groups;
  const pick = (field: keyof SessionPolicy): number => {
    const fromGroups: number[] = [];
    if (groups) {
      for (const g of user.groups) {
        const v = Object.hasOwn(groups, g) ? groups[g]?.[field] : undefined;
        if (v !== undefined) fromGroups.push(v);
      }
    }
    if (fromGroups.length > 0) return mostGenerous(fromGroups);
    return vm.policy?.[field] ?? defaults[field];
  };
  return { idleTimeoutMs: pick('idleTimeoutMs'), maxSessionMs: pick('maxSessionMs') };
}

export function sessionCaps(vm: VmRecord, user: Pick<UserRecord, 'maxSessions'>, defaults: CapDefaults): SessionCapValues {
  return { user: user.maxSessions ?? defaults.maxSessionsPerUser, vm: vm.maxSessions ?? defaults.maxSessionsPerVm };
}
