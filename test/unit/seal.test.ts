/**
 * Sealing the signing key ring (cluster/seal.ts): only the seal key opens it, tampering is caught,
 * and a ring written before sealing existed is read as it is.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createCa } from '../../certs/ca.js';
import { KeyRingSeal, sealKeyFromCa, sealedForm } from '../../gateway/cluster/seal.js';

const ring = JSON.stringify({ current: { id: 2, secret: 'c2VjcmV0LXNlY3JldC1zZWNyZXQ' }, previous: [] });

t.test('the seal key comes from the CA key: the same on every node holding it, another for another CA', async (t) => {
  const ca = createCa();
  t.same(sealKeyFromCa(ca.key), sealKeyFromCa(ca.key));
  t.equal(sealKeyFromCa(ca.key).length, 32);
  t.notSame(sealKeyFromCa(ca.key), sealKeyFromCa(createCa().key));
});

t.test('a sealed ring opens with its key only; a plain one passes through', async (t) => {
  const seal = new KeyRingSeal(randomBytes(32));
  const sealed = seal.seal(ring);
  t.notOk(sealed.includes('c2VjcmV0'), 'the secret is not readable in the sealed text');
  t.ok(sealedForm(sealed));
  t.equal(seal.open(sealed), ring);
  t.not(seal.seal(ring), sealed, 'a fresh nonce each time');
  t.equal(new KeyRingSeal(randomBytes(32)).open(sealed), undefined, 'another key cannot open it');
  const s = sealedForm(sealed)!;
  const flipped = JSON.stringify({ ...s, ct: Buffer.from(Buffer.from(s.ct, 'base64').map((b, i) => (i === 0 ? b ^ 1 : b))).toString('base64') });
  t.equal(seal.open(flipped), undefined, 'a changed byte is caught');
  t.equal(seal.open(ring), ring, 'a ring from before sealing is read as it is');
  t.equal(sealedForm(ring), undefined);
  t.throws(() => new KeyRingSeal(randomBytes(16)));
});
