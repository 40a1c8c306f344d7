/**
 * The embedded auth store's revocations file (security issue 10, point 6): revocations survive a
 * new store on the same file, expired ones are pruned, concurrent revocations all reach the disk,
 * and a damaged file stops the start instead of bringing logged-out sessions back.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryAuthStore } from '../../gateway/auth/store.js';

function file(t: { teardown(f: () => unknown): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-revoked-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'revoked-sessions.json');
}

t.test('a revocation is on disk when revokeSession resolves, and a new store reads it', async (t) => {
  const f = file(t);
  let now = 1_000_000;
  const a = new MemoryAuthStore({ now: () => now, revocationsFile: f });
  await a.revokeSession('sessionAAAAAAAAA', now + 60_000);
  t.equal(statSync(f).mode & 0o777, 0o600, 'the file is private');
  t.same(JSON.parse(readFileSync(f, 'utf8')), { format: 'oneport-revoked-sessions/1', revoked: { sessionAAAAAAAAA: now + 60_000 } });
  await a.close();
  const b = new MemoryAuthStore({ now: () => now, revocationsFile: f });
  t.teardown(() => b.close());
  t.ok(await b.isSessionRevoked('sessionAAAAAAAAA'), 'revoked after a "restart"');
  t.notOk(await b.isSessionRevoked('sessionBBBBBBBBB'), 'others are not');
  now += 60_000;
  t.notOk(await b.isSessionRevoked('sessionAAAAAAAAA'), 'once the session would have expired anyway, the entry no longer matters');
});

t.test('expired entries are pruned on load and from the next write', async (t) => {
  const f = file(t);
  let now = 1_000_000;
  const a = new MemoryAuthStore({ now: () => now, revocationsFile: f });
  await a.revokeSession('short', now + 1_000);
  await a.revokeSession('long', now + 100_000);
  await a.revokeSession('already-over', now - 1);
  t.same(Object.keys(JSON.parse(readFileSync(f, 'utf8')).revoked).sort(), ['long', 'short'], 'an already expired session is not written');
  await a.close();
  now += 5_000;
  const b = new MemoryAuthStore({ now: () => now, revocationsFile: f });
  t.teardown(() => b.close());
  t.notOk(await b.isSessionRevoked('short'));
  await b.revokeSession('another', now + 100_000);
  t.same(Object.keys(JSON.parse(readFileSync(f, 'utf8')).revoked).sort(), ['another', 'long'], 'the expired entry is gone from the file');
});

t.test('concurrent revocations all reach the file', async (t) => {
  const f = file(t);
  const s = new MemoryAuthStore({ revocationsFile: f });
  const ids = Array.from({ length: 200 }, (_, i) => `session-${i}`);
  await Promise.all(ids.map((id) => s.revokeSession(id, Date.now() + 60_000)));
  t.same(Object.keys(JSON.parse(readFileSync(f, 'utf8')).revoked).sort(), [...ids].sort(), 'every one, once all have resolved');
  await s.close();
});

t.test('a damaged file stops the store from starting, naming the file', async (t) => {
  const f = file(t);
  for (const text of ['{"format":"oneport-revoked-sessions/1","revoked":{"ok":1', '[]', '{"format":"other","revoked":{}}', '{"format":"oneport-revoked-sessions/1","revoked":{"a b":1}}', '{"format":"oneport-revoked-sessions/1","revoked":{"a":"soon"}}']) {
    writeFileSync(f, text);
    t.throws(() => new MemoryAuthStore({ revocationsFile: f }), { message: new RegExp(`${f}.*damaged`) }, text);
  }
});

t.test('no file yet: an empty store; no file given: memory only (as before)', async (t) => {
  const f = file(t);
  const s = new MemoryAuthStore({ revocationsFile: f });
  t.notOk(await s.isSessionRevoked('x'));
  await s.close();
  let now = 5;
  const m = new MemoryAuthStore(() => now);
  await m.revokeSession('x', 10);
  t.ok(await m.isSessionRevoked('x'));
  now = 10;
  t.notOk(await m.isSessionRevoked('x'));
  await m.close();
});
