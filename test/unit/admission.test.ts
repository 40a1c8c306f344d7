/**
 * admission.ts alone: the key an address is counted under, and the two rules that refuse a
 * connection at accept (per-address limit, fair share above 80% of the global cap).
 */
import t from 'tap';
import { ConnectionCounts, HIGH_WATER } from '../../gateway/admission.js';

t.test('per-address limit: the connection after the limit is refused; a closed one makes room', async (t) => {
  const c = new ConnectionCounts({ maxConnections: 1000, maxConnectionsPerAddress: 2 });
  for (let i = 0; i < 2; i++) {
    t.equal(c.check('a'), undefined, `connection ${i + 1} admitted`);
    c.add('a');
  }
  t.equal(c.check('a'), 'address-limit', 'the third is refused');
  t.equal(c.check('b'), undefined, 'another address is not');
  c.remove('a');
  t.equal(c.check('a'), undefined, 'after one closed, admitted again');
  t.equal(c.total, 1);
  c.remove('a');
  c.remove('a');
  t.equal(c.total, 0, 'removing more than was added never goes negative');
  t.equal(c.holding('a'), 0);
});

t.test('fair share: below 80% of the cap nobody is held to it; above, an address at its share is refused', async (t) => {
  const max = 100;
  const c = new ConnectionCounts({ maxConnections: max, maxConnectionsPerAddress: 1000 });
  const high = Math.floor(max * HIGH_WATER);
  for (let i = 0; i < high; i++) {
    t.equal(c.check('big'), undefined);
    c.add('big');
  }
  t.equal(c.total, 80);
  // One address holding 80 of 100: its share is 100 / (1 + 1) = 50.
  t.equal(c.check('big'), 'fair-share', 'the busy address is refused at 80%');
  t.equal(c.check('new'), undefined, 'an address holding nothing is always admitted');
  // Newcomers each get up to 100 / (addresses + 1); the last slots are theirs, not the busy one's.
  c.add('new');
  c.add('other');
  t.equal(c.check('big'), 'fair-share');
  t.equal(c.check('new'), undefined, 'holding 1, under its share of 100 / 4 = 25');
});

t.test('fair share: many addresses each below the share may go on; one at the share may not', async (t) => {
  const c = new ConnectionCounts({ maxConnections: 100, maxConnectionsPerAddress: 1000 });
  // Four addresses with 20 each: 80 in all, share 100 / 5 = 20.
  for (const k of ['a', 'b', 'c', 'd']) for (let i = 0; i < 20; i++) c.add(k);
  for (const k of ['a', 'b', 'c', 'd']) t.equal(c.check(k), 'fair-share', `${k} holds its share`);
  // Eight addresses with 10 each: share 100 / 9 = 11.
  const d = new ConnectionCounts({ maxConnections: 100, maxConnectionsPerAddress: 1000 });
  for (const k of 'abcdefgh') for (let i = 0; i < 10; i++) d.add(k);
  t.equal(d.check('a'), undefined, 'an address under its share is admitted above 80%');
  d.add('a');
  t.equal(d.check('a'), 'fair-share', 'and refused once it reaches it');
});

t.test('the per-address limit comes first, and a tiny cap still admits a newcomer', async (t) => {
  const c = new ConnectionCounts({ maxConnections: 2, maxConnectionsPerAddress: 1 });
  c.add('a');
  t.equal(c.check('a'), 'address-limit');
  t.equal(c.check('b'), undefined);
  const one = new ConnectionCounts({ maxConnections: 1, maxConnectionsPerAddress: 5 });
  t.equal(one.check('a'), undefined, 'an empty node with a cap of 1 admits the first connection');
  one.add('a');
  t.equal(one.check('a'), 'fair-share');
});

t.test('hold: a parked session counts against its address until released, once', async (t) => {
  const c = new ConnectionCounts({ maxConnections: 1000, maxConnectionsPerAddress: 2 });
  c.add('a');
  const release = c.hold('a');
  t.equal(c.holding('a'), 2, 'the hold counts like a connection');
  t.equal(c.check('a'), 'address-limit', 'so the address is at its limit');
  release();
  release();
  t.equal(c.holding('a'), 1, 'released once, however often called');
  t.equal(c.total, 1);
  t.equal(c.check('a'), undefined);
});
