/**
 * Session controls as pure functions (tunnel/policy.ts): which idle timeout, maximum session time
 * and session caps apply to a user on a VM, and what the directory accepts as a policy.
 */
import t from 'tap';
import { toVmRecord, vmSchema, type VmRecord } from '../../gateway/directory/directory.js';
import { effectivePolicy, sessionCaps } from '../../gateway/tunnel/policy.js';
import { buildConfig } from '../../gateway/config.js';

const defaults = { idleTimeoutMs: 3_600_000, maxSessionMs: 0 };
function vm(extra: Record<string, unknown> = {}): VmRecord {
  return toVmRecord(vmSchema.parse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }], ...extra }));
}

t.test('policy precedence: group override, else the VM, else the config default', async (t) => {
  t.same(effectivePolicy(vm(), { groups: [] }, defaults), defaults, 'no policy: the defaults');
  const v = vm({ policy: { maxSessionMs: 8 * 3_600_000, idleTimeoutMs: 900_000, groups: { contractors: { maxSessionMs: 3_600_000 }, night: { idleTimeoutMs: 0 }, staff: { maxSessionMs: 10 * 3_600_000 } } } });
  t.same(effectivePolicy(v, { groups: [] }, defaults), { idleTimeoutMs: 900_000, maxSessionMs: 8 * 3_600_000 }, 'the VM\'s values');
  t.same(effectivePolicy(v, { groups: ['contractors'] }, defaults), { idleTimeoutMs: 900_000, maxSessionMs: 3_600_000 }, 'a group overrides only the fields it sets');
  t.same(effectivePolicy(v, { groups: ['contractors', 'staff'] }, defaults).maxSessionMs, 10 * 3_600_000, 'in several groups: the most generous');
  t.same(effectivePolicy(v, { groups: ['night', 'contractors'] }, defaults).idleTimeoutMs, 0, '0 (never) is the most generous');
  t.same(effectivePolicy(v, { groups: ['constructor', '__proto__', 'toString'] }, defaults), { idleTimeoutMs: 900_000, maxSessionMs: 8 * 3_600_000 }, 'group names are looked up as own keys only');
  t.same(effectivePolicy(vm({ policy: { idleTimeoutMs: 0 } }), { groups: [] }, defaults).idleTimeoutMs, 0, 'a VM may turn the idle timeout off');
});

t.test('caps: the record, else the config default; 0 = unlimited', async (t) => {
  const caps = { maxSessionsPerUser: 2, maxSessionsPerVm: 0 };
  t.same(sessionCaps(vm(), {}, caps), { user: 2, vm: 0 });
  t.same(sessionCaps(vm({ maxSessions: 5 }), { maxSessions: 0 }, caps), { user: 0, vm: 5 });
});

t.test('the directory validates policies and caps', async (t) => {
  const bad: Array<[string, Record<string, unknown>]> = [
    ['negative', { policy: { maxSessionMs: -1 } }],
    ['not an integer', { policy: { idleTimeoutMs: 1.5 } }],
    ['beyond a timer', { policy: { maxSessionMs: 2 ** 31 } }],
    ['unknown field', { policy: { maxSessionMinutes: 5 } }],
    ['unknown group field', { policy: { groups: { g: { maxSessions: 1 } } } }],
    ['negative cap', { maxSessions: -1 }],
  ];
  for (const [what, extra] of bad) t.notOk(vmSchema.safeParse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: 'h', port: 1 }], ...extra }).success, `refused: ${what}`);
  t.same(vm({ policy: { groups: { g: { idleTimeoutMs: 5 } } }, maxSessions: 3 }).policy, { groups: { g: { idleTimeoutMs: 5 } } }, 'a valid one is kept');
});

t.test('config: session controls and audit are validated', async (t) => {
  const ok = buildConfig({});
  t.same([ok.tunnel.maxSessionMs, ok.limits.maxSessionsPerUser, ok.limits.maxSessionsPerVm, ok.audit.webhookQueue], [0, 0, 0, 1000], 'defaults: no limits, a queue of 1000');
  t.equal(ok.audit.file, undefined, 'the audit file defaults to <state>/audit.log (resolved at start)');
  t.throws(() => buildConfig({ tunnel: { maxSessionMs: 2 ** 31 } }), /tunnel\.maxSessionMs/);
  t.throws(() => buildConfig({ limits: { maxSessionsPerUser: -1 } }), /limits\.maxSessionsPerUser/);
  t.throws(() => buildConfig({ audit: { webhook: 'ftp://example.invalid/' } }), /audit\.webhook/);
  t.throws(() => buildConfig({ audit: { file: true } }), /audit\.file/);
  t.throws(() => buildConfig({ audit: { hook: 'x' } }), /audit/, 'unknown keys refused');
});
