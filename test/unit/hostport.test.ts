/**
 * The one host:port parser (gateway/hostport.ts), as table tests: too short, invalid,
 * semi-valid (right shape, one field wrong), valid, and a valid one with an extra byte; IPv6
 * with and without brackets; the listening rules (port 0, empty host); formatting back.
 */
import t from 'tap';
import { MAX_HOST_PORT_LENGTH, formatHostPort, parseHostPort, parsePort, type HostPortRules } from '../../gateway/hostport.js';
import { parseListen } from '../../gateway/config.js';
import { parseAuthority } from '../../gateway/routing.js';
import { splitAddress } from '../../gateway/cluster/peers.js';

type Row = readonly [input: string, want: { host: string; port: number } | undefined, rules?: HostPortRules];

const tables: Record<string, readonly Row[]> = {
  'too short': [
    ['', undefined],
    [':', undefined],
    ['a', undefined],
    ['a:', undefined],
    [':1', undefined],
    ['[', undefined],
    ['[]:1', undefined],
  ],
  invalid: [
    ['desk', undefined],
    ['desk 5900', undefined],
    ['desk:port', undefined],
    ['de sk:5900', undefined],
    ['a/b:1', undefined],
    ['user@desk:1', undefined],
    ['desk:-1', undefined],
    ['desk:+1', undefined],
    ['desk:0x10', undefined],
    ['[nothost]:1', undefined],
    ['[1.2.3.4]:1', undefined],
    ['[::1]', undefined],
    ['[::1]22', undefined],
    ['[::1:22', undefined],
    ['::1]:22', undefined],
  ],
  'semi-valid': [
    ['desk:0', undefined],
    ['desk:65536', undefined],
    ['desk:99999', undefined],
    ['desk:123456', undefined],
    ['[::1]:0', undefined],
    ['[::1]:70000', undefined],
    ['[zz::1]:1', undefined],
    ['::1:22', undefined],
    ['fe80::1:22', undefined],
  ],
  valid: [
    ['desk:5900', { host: 'desk', port: 5900 }],
    ['DESK.Example:1', { host: 'DESK.Example', port: 1 }],
    ['desk_1.lab-2:65535', { host: 'desk_1.lab-2', port: 65535 }],
    ['127.0.0.1:22', { host: '127.0.0.1', port: 22 }],
    ['desk:05900', { host: 'desk', port: 5900 }],
    ['[::1]:22', { host: '::1', port: 22 }],
    ['[::ffff:127.0.0.1]:443', { host: '::ffff:127.0.0.1', port: 443 }],
    ['[fe80::1%eth0]:22', { host: 'fe80::1%eth0', port: 22 }],
    ['desk:0', { host: 'desk', port: 0 }, { portZero: true }],
    [':8443', { host: '', port: 8443 }, { emptyHost: true }],
    ['[::]:0', { host: '::', port: 0 }, { portZero: true }],
  ],
  'extra byte': [
    ['desk:5900 ', undefined],
    [' desk:5900', undefined],
    ['desk:5900\n', undefined],
    ['desk:5900:', undefined],
    ['desk:5900/', undefined],
    ['[::1]:22]', undefined],
    ['[::1]:22:', undefined],
    ['desk:5900\u0000', undefined],
    ['desk\u00e9:5900', undefined],
  ],
};

for (const [name, rows] of Object.entries(tables)) {
  t.test(name, async (t) => {
    for (const [input, want, rules] of rows) {
      t.same(parseHostPort(input, rules), want, `${JSON.stringify(input)}${rules ? ` ${JSON.stringify(rules)}` : ''}`);
    }
  });
}

t.test('lengths are bounded before anything else', async (t) => {
  const name = 'a'.repeat(MAX_HOST_PORT_LENGTH - 5);
  t.same(parseHostPort(`${name}:5900`), { host: name, port: 5900 }, 'exactly the limit');
  t.equal(parseHostPort(`${name}a:5900`), undefined, 'one byte over');
  t.equal(parseHostPort(`${'a'.repeat(100_000)}:1`), undefined);
});

t.test('ports', async (t) => {
  for (const [text, want] of [['1', 1], ['65535', 65535], ['0', undefined], ['65536', undefined], ['', undefined], ['1e3', undefined], ['٣', undefined]] as const) {
    t.equal(parsePort(text), want, JSON.stringify(text));
  }
  t.equal(parsePort('0', { portZero: true }), 0);
});

t.test('format, and back', async (t) => {
  t.equal(formatHostPort('desk', 5900), 'desk:5900');
  t.equal(formatHostPort('127.0.0.1', 1), '127.0.0.1:1');
  t.equal(formatHostPort('::1', 443), '[::1]:443');
  t.equal(formatHostPort('fe80::1%eth0', 22), '[fe80::1%eth0]:22');
  for (const [host, port] of [['desk', 1], ['::', 65535], ['::ffff:10.0.0.1', 8443], ['10.0.0.1', 22]] as const) {
    t.same(parseHostPort(formatHostPort(host, port)), { host, port }, `${host} round trip`);
  }
});

t.test('the callers keep their own rules on top', async (t) => {
  t.same(parseAuthority('DESK:5900'), { host: 'desk', port: 5900, literal: false }, 'CONNECT: lowercased');
  t.same(parseAuthority('[::1]:22'), { host: '::1', port: 22, literal: true }, 'CONNECT: address literals marked');
  t.same(parseAuthority('127.1:22'), { host: '127.1', port: 22, literal: true });
  t.equal(parseAuthority(':5900'), undefined, 'CONNECT: a host is required');
  t.same(parseListen(':0'), { host: '0.0.0.0', port: 0 }, 'listen: every address, any port');
  t.same(parseListen('[::]:8443'), { host: '::', port: 8443 });
  t.equal(parseListen('[::1]:70000'), undefined);
  t.same(splitAddress('[::1]:8443'), { host: '::1', port: 8443 }, 'node addresses');
  t.throws(() => splitAddress(':8443'), /bad node address/);
  t.throws(() => splitAddress('::1:8443'), /bad node address/);
});
