/**
 * Join tokens in a real Redis (cluster/join.ts JoinTokens): stored by hash with their lifetime,
 * redeemed once, even by many redeemers at the same moment, and gone when they expire.
 */
import t from 'tap';
import { startRedis, redisClient } from '../helpers/redis.js';
import { eventually } from '../helpers/wait.js';
import { createCa } from '../../certs/ca.js';
import { JoinTokens, mintJoinToken } from '../../gateway/cluster/join.js';

const PREFIX = 'test:{dir}:';

t.test('a join token is redeemed once, atomically, and not after it expired', async (t) => {
  const redis = await startRedis(t);
  const client = redisClient(t, redis.url);
  const tokens = new JoinTokens(client, PREFIX);
  const ca = createCa();

  const once = mintJoinToken(ca.cert);
  const record = { node: 'n2', by: 'root', expiresAt: Date.now() + 60_000 };
  await tokens.put(once.hash, record, 60_000);
  t.equal(await client.get(`${PREFIX}join:${once.hash}`), JSON.stringify(record), 'stored under its hash');
  const ttl = await client.pttl(`${PREFIX}join:${once.hash}`);
  t.ok(ttl > 0 && ttl <= 60_000, `with its lifetime (${ttl} ms)`);
  await t.rejects(tokens.put(once.hash, record, 60_000), /collision/, 'never overwritten');
  t.same(await tokens.redeem(once.hash), record, 'redeemed');
  t.equal(await tokens.redeem(once.hash), undefined, 'once');

  const raced = mintJoinToken(ca.cert);
  await tokens.put(raced.hash, { ...record, node: 'n3' }, 60_000);
  const results = await Promise.all(Array.from({ length: 20 }, () => tokens.redeem(raced.hash)));
  t.equal(results.filter((r) => r !== undefined).length, 1, 'of 20 redeemers at once, exactly one gets it');

  const short = mintJoinToken(ca.cert);
  await tokens.put(short.hash, { ...record, node: 'n4' }, 50);
  await eventually(async () => ((await client.exists(`${PREFIX}join:${short.hash}`)) === 0 ? true : undefined), 5_000, 'expired');
  t.equal(await tokens.redeem(short.hash), undefined, 'an expired token is gone');
  t.equal(await tokens.redeem(mintJoinToken(ca.cert).hash), undefined, 'an unknown one was never there');
});
