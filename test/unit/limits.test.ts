/**
 * gateway/auth/limits.ts alone: the key an address is limited under (IPv6 per /64, IPv4-mapped as
 * IPv4), reserving attempts before the work, and the concurrency gate.
 */
import t from 'tap';
import { OneportError } from '../../gateway/errors.js';
import { AttemptLimiter, ConcurrencyGate } from '../../gateway/auth/limits.js';

t.test('AttemptLimiter.take reserves before the work: parallel takes cannot exceed the budget', async (t) => {
  const l = new AttemptLimiter(3);
  const results = await Promise.allSettled(Array.from({ length: 10 }, () => l.take('k')));
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 3, 'three of ten succeed');
  const refused = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.ok(refused?.reason instanceof OneportError && refused.reason.code === 'ONEPORT_ERR_RATE_LIMITED', 'the rest: ONEPORT_ERR_RATE_LIMITED');
  t.ok((refused?.reason as OneportError).retryAfter! >= 1, 'with a Retry-After');
  await t.resolves(l.take('other'), 'another key has its own budget');
});

t.test('AttemptLimiter.refund gives an attempt back, never below zero', async (t) => {
  const l = new AttemptLimiter(2);
  await l.take('k');
  await l.refund('k');
  await l.take('k');
  await l.take('k');
  await t.rejects(l.take('k'), { code: 'ONEPORT_ERR_RATE_LIMITED' }, 'two taken, a third refused');
  const fresh = new AttemptLimiter(1);
  await fresh.refund('never-taken');
  await fresh.take('never-taken');
  await t.rejects(fresh.take('never-taken'), { code: 'ONEPORT_ERR_RATE_LIMITED' }, 'a refund with nothing taken gives no credit');
});

t.test('ConcurrencyGate: per key and in total; leaving frees the slot once', async (t) => {
  const g = new ConcurrencyGate(2, 3);
  const a1 = g.enter('a');
  const a2 = g.enter('a');
  t.throws(() => g.enter('a'), { code: 'ONEPORT_ERR_RATE_LIMITED', retryAfter: 1 }, 'a third for one key: refused');
  const b1 = g.enter('b');
  t.throws(() => g.enter('c'), { code: 'ONEPORT_ERR_RATE_LIMITED' }, 'a fourth in total: refused');
  t.equal(g.size, 3);
  a1();
  a1();
  t.equal(g.size, 2, 'leaving twice frees one slot');
  const c1 = g.enter('c');
  t.throws(() => g.enter('a'), { code: 'ONEPORT_ERR_RATE_LIMITED' }, 'total still bounds');
  for (const leave of [a2, b1, c1]) leave();
  t.equal(g.size, 0);
  g.enter('a')();
});
