/**
 * The .rdp files the portal hands out (gateway/rdp/rdp-file.ts): both variants line for line, the
 * gateway address with its port written out, and no way to inject a setting through a value.
 */
import t from 'tap';
import fc from 'fast-check';
import { FUZZ_SEED, runs } from '../helpers/fuzz.js';
import { gatewayAddress, isRdpFileVariant, rdpFile } from '../../gateway/rdp/rdp-file.js';

const ticket = 'a'.repeat(50);

t.test('the gateway variant: the VM behind the RD Gateway on the one port, the ticket as access token', async (t) => {
  t.equal(
    rdpFile({ variant: 'gateway', vm: 'win.corp', publishedPort: 3389, gateway: 'gw.example:8443', ticket }),
    [
      'full address:s:win.corp',
      'gatewayhostname:s:gw.example:8443',
      'gatewayusagemethod:i:1',
      'gatewaycredentialssource:i:5',
      'gatewayprofileusagemethod:i:1',
      `gatewayaccesstoken:s:${ticket}`,
      'authentication level:i:2',
      'screen mode id:i:2',
      '',
    ].join('\r\n'),
  );
  t.match(rdpFile({ variant: 'gateway', vm: 'win', publishedPort: 3390, gateway: 'gw', ticket }), /^full address:s:win:3390\r\n/, 'a published port other than 3389');
});

t.test('the native variant: straight to the port, <ticket>.<vm> as routing token and preconnection blob', async (t) => {
  t.equal(
    rdpFile({ variant: 'native', vm: 'win', publishedPort: 3389, gateway: 'gw.example', ticket }),
    ['full address:s:gw.example:443', `loadbalanceinfo:s:${ticket}.win`, `pcb:s:${ticket}.win`, 'authentication level:i:2', 'screen mode id:i:2', ''].join('\r\n'),
  );
});

t.test('gateway addresses: the port written out', async (t) => {
  t.equal(gatewayAddress('gw:8443'), 'gw:8443');
  t.equal(gatewayAddress('gw'), 'gw:443');
  t.equal(gatewayAddress('[2001:db8::1]'), '[2001:db8::1]:443');
  t.equal(gatewayAddress('[2001:db8::1]:9443'), '[2001:db8::1]:9443');
  t.ok(isRdpFileVariant('native') && isRdpFileVariant('gateway') && !isRdpFileVariant('mstsc'));
});

t.test('no value can start a setting of its own', async (t) => {
  for (const bad of ['win\r\nalternate shell:s:cmd', 'win\nx', 'win\rx', 'w\0in', 'w\u007fin']) {
    t.throws(() => rdpFile({ variant: 'native', vm: bad, publishedPort: 3389, gateway: 'gw', ticket }), RangeError, JSON.stringify(bad));
    t.throws(() => rdpFile({ variant: 'gateway', vm: 'win', publishedPort: 3389, gateway: bad, ticket }), RangeError);
  }
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), fc.constantFrom('gateway' as const, 'native' as const), (vm, variant) => {
      let text: string;
      try {
        text = rdpFile({ variant, vm, publishedPort: 3389, gateway: 'gw:1', ticket });
      } catch (e) {
        return e instanceof RangeError;
      }
      // Whatever got through is exactly one line per setting.
      return text.split('\r\n').length === (variant === 'gateway' ? 9 : 6) && !/[\r\n]/.test(text.replaceAll('\r\n', ''));
    }),
    { numRuns: runs(2000), seed: FUZZ_SEED },
  );
});
