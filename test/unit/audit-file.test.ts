/**
 * The audit file's batching: session records are held up to 50 ms and written together, in order;
 * an admin record goes out at once with whatever waited before it; close() writes everything.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { AuditLog, type AdminAuditRecord, type SessionAuditRecord } from '../../gateway/audit.js';
import type { Logger } from '../../gateway/log.js';
import { Metrics } from '../../gateway/metrics.js';
import { until } from '../helpers/wait.js';

const session = (i: number): SessionAuditRecord => ({
  kind: 'session', time: new Date().toISOString(), id: `t${i}`, user: 'alice', vm: 'desk', protocol: 'vnc', transport: 'connect-tls',
  client: '127.0.0.1', via: 'ticket', session: `s${i}`, entryNode: 'n1', consoleNode: 'n1', start: new Date().toISOString(),
  end: new Date().toISOString(), durationMs: 1, bytesToConsole: i, bytesToClient: i, closeReason: 'client-closed',
});
const admin = (action: string): AdminAuditRecord => ({
  kind: 'admin', time: new Date().toISOString(), node: 'n1', actor: 'root', via: 'api', client: '127.0.0.1', action, target: { type: 'user', name: 'bob' },
});

function setup(t: { teardown(fn: () => void): void }): { file: string; audit: AuditLog; lines: () => Array<Record<string, unknown>> } {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-audit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.log');
  const audit = new AuditLog({ file, metrics: new Metrics(), log: pino({ level: 'silent' }) as Logger });
  const lines = (): Array<Record<string, unknown>> =>
    readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { file, audit, lines };
}

t.test('a burst of session records is written whole and in order', async (t) => {
  const { audit, lines } = setup(t);
  for (let i = 0; i < 500; i++) audit.record(session(i));
  t.ok(audit.holding, 'held back, not a write per record');
  t.equal(lines().length, 0);
  await until(() => lines().length === 500);
  t.same(lines().map((r) => r.id), Array.from({ length: 500 }, (_, i) => `t${i}`), 'every record, in order');
  await audit.close();
});

t.test('an admin record goes out at once, after the session records that waited', async (t) => {
  const { audit, lines } = setup(t);
  audit.record(session(1));
  t.ok(audit.holding, 'the session record waits');
  audit.record(admin('user.put'));
  t.notOk(audit.holding, 'the admin record sent both on their way');
  await until(() => lines().length === 2);
  t.same(lines().map((r) => r.kind), ['session', 'admin'], 'in the order they happened');
  await audit.close();
});

t.test('close() writes what is held', async (t) => {
  const { audit, lines } = setup(t);
  audit.record(session(7));
  await audit.close();
  t.same(lines().map((r) => r.id), ['t7']);
  audit.record(session(8));
  t.same(lines().map((r) => r.id), ['t7'], 'nothing after close');
});
