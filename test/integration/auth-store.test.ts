/**
 * One conformance suite for every AuthStore (the hono habit: one interface, one suite, all
 * implementations): MemoryAuthStore, and RedisAuthStore on a real redis-server, where two
 * instances (two gateway nodes) also race to redeem the same ticket.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { MemoryAuthStore, type AuthStore, type TicketRecord } from '../../gateway/auth/store.js';
import { RedisAuthStore } from '../../gateway/auth/redis-store.js';
import { DirectoryUnavailableError } from '../../gateway/directory/redis.js';
import { startRedis, redisClient } from '../helpers/redis.js';
import { until } from '../helpers/wait.js';

/** Two handles on one store: the same object for memory, two connections (two nodes) for Redis. */
type Make = (t: Test) => Promise<[AuthStore, AuthStore]>;

function ticket(overrides: Partial<TicketRecord> = {}): TicketRecord {
  return { id: randomBytes(16).toString('hex'), user: 'alice', vm: 'desk', protocol: 'spice', expiresAt: Date.now() + 60_000, ...overrides };
}
const sid = (): string => randomBytes(9).toString('base64url');

/** The reuse rule the conformance tests pass (config auth.ticketReuseMs, auth.ticketReuseAfterCloseMs). */
const REUSE = { windowMs: 10_000, afterCloseMs: 2_000 };

function conformance(name: string, make: Make): void {
  t.test(`${name}: ticket redemption and session revocation semantics`, async (t) => {
    const [a, b] = await make(t);
    const rec = ticket();
    const first = sid();

    t.same(await a.redeemTicket(rec.id, '10.0.0.1', Date.now(), sid(), REUSE), { outcome: 'refused', reason: 'unknown' }, 'an unknown ticket');
    await a.putTicket(rec);
    t.same(await b.redeemTicket(rec.id, '10.0.0.1', rec.expiresAt - 1, first, REUSE), { outcome: 'first', record: rec, sessionId: first }, 'first use, one ms before expiry, on any node');
    t.same(await a.redeemTicket(rec.id, '10.0.0.1', Date.now(), sid(), REUSE), { outcome: 'again', record: rec, sessionId: first }, 'same address: the same session (a SPICE channel)');
    t.same(await b.redeemTicket(rec.id, '10.0.0.2', Date.now(), sid(), REUSE), { outcome: 'refused', reason: 'replay' }, 'another address: a replay');
    t.same(await a.redeemTicket(rec.id, '10.0.0.1', rec.expiresAt, sid(), REUSE), { outcome: 'refused', reason: 'expired' }, 'at expiry, even for the bound address');
    t.same(await a.redeemTicket(rec.id, '10.0.0.1', Date.now(), sid(), REUSE), { outcome: 'refused', reason: 'unknown' }, 'an expired ticket is dropped');

    const windowed = ticket();
    await a.putTicket(windowed);
    const t0 = Date.now();
    t.equal((await b.redeemTicket(windowed.id, '10.0.0.6', t0, sid(), REUSE)).outcome, 'first');
    t.equal((await a.redeemTicket(windowed.id, '10.0.0.6', t0 + REUSE.windowMs, sid(), REUSE)).outcome, 'again', 'the same address at the end of the reuse window: still that session');
    t.same(await b.redeemTicket(windowed.id, '10.0.0.6', t0 + REUSE.windowMs + 1, sid(), REUSE), { outcome: 'refused', reason: 'replay' }, 'after the window: spent, even from the same address');

    // Open connections and the grace after the last one closed (an RDP client's retry).
    const counted = ticket();
    await a.putTicket(counted);
    const c0 = Date.now();
    t.equal((await a.redeemTicket(counted.id, '10.0.0.7', c0, sid(), REUSE)).outcome, 'first');
    t.equal((await b.redeemTicket(counted.id, '10.0.0.7', c0 + 5_000, sid(), REUSE)).outcome, 'again', 'a connection is open: another joins it (a SPICE channel)');
    await a.releaseTicket(counted.id, c0 + 6_000);
    t.equal((await b.redeemTicket(counted.id, '10.0.0.7', c0 + 6_500, sid(), REUSE)).outcome, 'again', 'one of two closed: the other is still open');
    await b.releaseTicket(counted.id, c0 + 7_000);
    await a.releaseTicket(counted.id, c0 + 7_000);
    await a.releaseTicket(counted.id, c0 + 7_000);
    t.equal((await a.redeemTicket(counted.id, '10.0.0.7', c0 + 7_000 + REUSE.afterCloseMs, sid(), REUSE)).outcome, 'again', 'all closed: a retry within the grace joins (and one release too many changed nothing)');
    await a.releaseTicket(counted.id, c0 + 7_500);
    t.same(await b.redeemTicket(counted.id, '10.0.0.7', c0 + 7_500 + REUSE.afterCloseMs + 1, sid(), REUSE), { outcome: 'refused', reason: 'replay' }, 'all closed and the grace over: spent, although within the window');
    await a.releaseTicket('no-such-ticket', c0);
    t.pass('releasing an unknown ticket is a no-op');

    const late = ticket();
    await b.putTicket(late);
    t.same(await a.redeemTicket(late.id, '10.0.0.3', late.expiresAt + 5_000, sid(), REUSE), { outcome: 'refused', reason: 'expired' }, 'never used, redeemed late');

    const reissued = ticket();
    await a.putTicket(reissued);
    const s1 = sid();
    t.equal((await a.redeemTicket(reissued.id, '10.0.0.4', Date.now(), s1, REUSE)).outcome, 'first');
    await b.putTicket(reissued);
    const s2 = sid();
    t.same(await a.redeemTicket(reissued.id, '10.0.0.5', Date.now(), s2, REUSE), { outcome: 'first', record: reissued, sessionId: s2 }, 'putting a ticket again starts it afresh');

    const session = sid();
    t.equal(await a.isSessionRevoked(session), false);
    await a.revokeSession(session, Date.now() + 60_000);
    t.equal(await a.isSessionRevoked(session), true, 'revoked at once where it was revoked');
    await until(() => b.isSessionRevoked(session), { timeoutMs: 5000 });
    t.pass('and on every other node (RedisAuthStore: within a round trip, through the channel)');
    t.equal(await b.isSessionRevoked(sid()), false, 'other sessions are not');
    const past = sid();
    await b.revokeSession(past, Date.now() - 1);
    t.equal(await a.isSessionRevoked(past), false, 'a revocation that already ended is no revocation');
    t.equal(await b.isSessionRevoked(past), false);
  });

  t.test(`${name}: racing redemptions of one ticket: exactly one first`, async (t) => {
    const [a, b] = await make(t);
    for (let round = 0; round < 50; round++) {
      const rec = ticket();
      await a.putTicket(rec);
      const tries = Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).redeemTicket(rec.id, `10.1.0.${i}`, Date.now(), `s${round}-${i}`, REUSE));
      const results = await Promise.all(tries);
      const firsts = results.filter((r) => r.outcome === 'first');
      if (firsts.length !== 1) t.fail(`round ${round}: ${firsts.length} firsts`, { results });
      if (results.filter((r) => r.outcome === 'refused' && r.reason === 'replay').length !== 7) t.fail(`round ${round}: the others must be replays`, { results });
      // Same address racing: one first, the rest join its session.
      const shared = ticket();
      await b.putTicket(shared);
      const same = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).redeemTicket(shared.id, '10.2.0.1', Date.now(), `x${round}-${i}`, REUSE)));
      const opened = same.filter((r) => r.outcome === 'first');
      if (opened.length !== 1 || !same.every((r) => r.outcome !== 'refused' && r.sessionId === (opened[0] as { sessionId: string } | undefined)?.sessionId)) {
        t.fail(`round ${round}: same-address redemptions must share one session`, { same });
      }
    }
    t.pass('50 rounds of 8 racing addresses and 6 racing channels');
  });
}

conformance('MemoryAuthStore', async (t) => {
  const s = new MemoryAuthStore();
  t.teardown(() => s.close());
  return [s, s];
});

const root = t;
let redisUrl: Promise<string> | undefined;
conformance('RedisAuthStore', async (t) => {
  // One redis-server for the file, started by the first test that needs it.
  redisUrl ??= startRedis(root).then((r) => r.url);
  const url = await redisUrl;
  const prefix = `auth-${randomBytes(4).toString('hex')}:`;
  const a = await RedisAuthStore.open({ redis: url, prefix });
  t.teardown(() => a.close());
  const b = await RedisAuthStore.open({ redis: url, prefix });
  t.teardown(() => b.close());
  return [a, b];
});

t.test('RedisAuthStore: Redis gone means a clear error for tickets; revocation checks answer from the copy', async (t) => {
  const redis = await startRedis(t);
  const s = await RedisAuthStore.open({ redis: redis.url });
  t.teardown(() => s.close());
  const out = sid();
  await s.revokeSession(out, Date.now() + 60_000);
  await redis.kill();
  await t.rejects(s.redeemTicket('00', '10.0.0.1', Date.now(), sid(), REUSE), DirectoryUnavailableError);
  await t.rejects(s.revokeSession(sid(), Date.now() + 60_000), DirectoryUnavailableError, 'a revocation that cannot be stored is an error, not a silent no');
  t.equal(await s.isSessionRevoked(out), true, 'a revoked session stays revoked while Redis is away');
  t.equal(await s.isSessionRevoked(sid()), false, 'and the others keep working');
  await t.rejects(RedisAuthStore.open({ redis: redis.url }), DirectoryUnavailableError);
});

t.test('RedisAuthStore: the copy is loaded at open, follows other nodes, and catches up after a reconnect', async (t) => {
  const redis = await startRedis(t);
  const prefix = `copy-${randomBytes(4).toString('hex')}:`;
  const a = await RedisAuthStore.open({ redis: redis.url, prefix });
  t.teardown(() => a.close());
  const before = sid();
  await a.revokeSession(before, Date.now() + 60_000);
  const heard: string[] = [];
  const b = await RedisAuthStore.open({ redis: redis.url, prefix, onRevoked: (id) => heard.push(id) });
  t.teardown(() => b.close());
  t.equal(await b.isSessionRevoked(before), true, 'revoked before this node started: loaded at open');
  const live = sid();
  await a.revokeSession(live, Date.now() + 60_000);
  await until(() => heard.includes(live), { timeoutMs: 5000 });
  t.equal(await b.isSessionRevoked(live), true, 'revoked on another node: heard on the channel');
  await b.revokeSession(sid(), Date.now() + 60_000);
  t.same(heard, [live], 'its own revocations are not reported back to it');

  // A revocation whose message b never got (written without one, as if published while b's feed
  // was down); then b's feed connection is cut, as a Redis restart or a network cut would: the
  // reload after its reconnect finds the key.
  const admin = redisClient(t, redis.url);
  const missed = sid();
  await admin.set(`${prefix}r:${missed}`, String(Date.now() + 60_000), 'PX', 60_000);
  t.equal(await b.isSessionRevoked(missed), false, 'not heard of yet');
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
  await until(() => b.isSessionRevoked(missed), { timeoutMs: 10_000 });
  t.pass('a revocation written while the feed was down is found after the reconnect');
});
