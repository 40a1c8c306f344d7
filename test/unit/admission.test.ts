/**
 * admission.ts alone: the key an address is counted under, and the two rules that refuse a
 * connection at accept (per-address limit, fair share above 80% of the global cap).
 */
import t from 'tap';
import { ConnectionCounts, HIGH_WATER, addressKey } from '../../gateway/admission.js';

t.test('addressKey: IPv4 by the address, IPv4-mapped IPv6 is IPv4, IPv6 by its /64', async (t) => {
  const table: Array<[string, string]> = [
    ['192.0.2.10', '192.0.2.10'],
    ['127.0.0.1', '127.0.0.1'],
    ['::ffff:192.0.2.10', '192.0.2.10'],
    ['::FFFF:192.0.2.10', '192.0.2.10'],
    ['2001:db8:1:2::1', '2001:db8:1:2::/64'],
    ['2001:db8:1:2:ffff:ffff:ffff:ffff', '2001:db8:1:2::/64'],
    ['2001:0db8:0001:0002:0000:0000:0000:0001', '2001:db8:1:2::/64'],
    ['2001:DB8:1:2::abcd', '2001:db8:1:2::/64'],
    ['2001:db8:1:3::1', '2001:db8:1:3::/64'],
    ['2001:db8::1', '2001:db8:0:0::/64'],
    ['::1', '0:0:0:0::/64'],
    ['::', '0:0:0:0::/64'],
    ['fe80::1%eth0', 'fe80:0:0:0::/64'],
    ['64:ff9b::192.0.2.10', '64:ff9b:0:0::/64'],
    ['1:2:3:4:5:6:1.2.3.4', '1:2:3:4::/64'],
    ['unknown', 'unknown'],
  ];
  for (const [address, key] of table) t.equal(addressKey(address), key, address);
  t.equal(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:2:aaaa::9'), 'two hosts of one /64 share a key');
  t.not(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:3::1'), 'neighbouring /64s do not');
  t.not(addressKey('192.0.2.10'), addressKey('192.0.2.11'), 'IPv4 addresses are not grouped');
});

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
