import t from 'tap';
import { isAddressLiteral, parseAuthority, selectEndpoint, splitHostTicket } from '../../gateway/routing.js';
import { toVmRecord, vmSchema, isValidVmName } from '../../gateway/directory/directory.js';
import { mintTicket } from '../../gateway/auth/tickets.js';
import { newSigningKey } from '../../gateway/directory/memory.js';

t.test('CONNECT authorities', async (t) => {
  t.same(parseAuthority('demo:5900'), { host: 'demo', port: 5900, literal: false });
  t.same(parseAuthority('DEMO.Example:3389'), { host: 'demo.example', port: 3389, literal: false });
  t.same(parseAuthority('[::1]:22'), { host: '::1', port: 22, literal: true });
  t.same(parseAuthority('127.0.0.1:22'), { host: '127.0.0.1', port: 22, literal: true });
  for (const bad of ['demo', 'demo:', ':5900', 'demo:0', 'demo:65536', 'demo:59x0', '::1:22', '[nothost]:1', 'de mo:1', 'a/b:1', '']) {
    t.equal(parseAuthority(bad), undefined, `refused: ${JSON.stringify(bad)}`);
  }
});

t.test('every way of writing an address is a literal', async (t) => {
  for (const a of ['127.0.0.1', '127.1', '2130706433', '0x7f.1', '0177.0.0.1', '::1', '::ffff:127.0.0.1', 'fe80::1%lo', '1.2.3.4.']) {
    t.ok(isAddressLiteral(a), a);
  }
  for (const n of ['demo', 'vm-1', '1vm', 'a.b']) t.notOk(isAddressLiteral(n), n);
  t.notOk(isValidVmName('127.0.0.1'), 'VM names cannot look like addresses');
  t.notOk(isValidVmName('10.1'), 'nor short forms');
  t.ok(isValidVmName('desk-01.lab'));
  t.notOk(isValidVmName('Desk'), 'lowercase only');
});

t.test('ticket in the host name', async (t) => {
  const { ticket } = mintTicket({ current: newSigningKey(1), previous: [] }, 'demo.lab', 'vnc', 60_000);
  t.same(splitHostTicket(`${ticket}.demo.lab`), { ticket, vm: 'demo.lab' });
  t.equal(splitHostTicket('demo.lab'), undefined);
  t.equal(splitHostTicket(`${ticket}`), undefined);
});

t.test('endpoint selection: header, published port, well-known port', async (t) => {
  const vm = toVmRecord(
    vmSchema.parse({
      name: 'desk',
      node: 'n1',
      endpoints: [
        { protocol: 'vnc', host: '127.0.0.1', port: 15900, publishedPort: 5901 },
        { protocol: 'spice', host: '127.0.0.1', port: 15930, publishedPort: 5930 },
        { protocol: 'rdp', host: '127.0.0.1', port: 13389 },
      ],
    }),
  );
  t.equal(selectEndpoint(vm, { port: 5901 }).protocol, 'vnc', 'published vnc port');
  t.equal(selectEndpoint(vm, { port: 5930 }).protocol, 'spice', 'published spice port');
  t.equal(selectEndpoint(vm, { port: 3389 }).protocol, 'rdp', 'well-known rdp');
  t.equal(selectEndpoint(vm, { port: 5999 }).protocol, 'vnc', '59xx prefers vnc');
  t.equal(selectEndpoint(vm, { port: 5999, ticketProtocol: 'spice' }).protocol, 'spice', 'the ticket breaks the tie');
  t.equal(selectEndpoint(vm, { port: 5901, protocol: 'spice' }).protocol, 'spice', 'the header wins');
  t.throws(() => selectEndpoint(vm, { port: 22 }), { code: 'ONEPORT_ERR_PORT_NOT_PUBLISHED' });
  t.throws(() => selectEndpoint(vm, { port: 22, protocol: 'vnc' }), { code: 'ONEPORT_ERR_PORT_NOT_PUBLISHED' });
  const vncOnly = toVmRecord(vmSchema.parse({ name: 'v', node: 'n', endpoints: [{ protocol: 'vnc', host: 'h', port: 1 }] }));
  t.throws(() => selectEndpoint(vncOnly, { port: 3389 }), { code: 'ONEPORT_ERR_PORT_NOT_PUBLISHED' });
  t.throws(() => selectEndpoint(vncOnly, { protocol: 'rdp' }), { code: 'ONEPORT_ERR_NO_SUCH_PROTOCOL' });
});
