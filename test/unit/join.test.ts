/**
 * Join tokens (cluster/join.ts) and node certificate requests (certs/ca.ts): the token's text form,
 * what Redis keeps of it, and every check a request must pass before the CA signs it.
 */
import t from 'tap';
import forge from 'node-forge';
import { X509Certificate, createHash, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { NodeRequestError, certificateFingerprint, createCa, createNodeRequest, readNodeRequest, signNodeRequest } from '../../certs/ca.js';
import { MAX_JOIN_TOKEN_CHARS, formatJoinToken, joinTokenHash, mintJoinToken, parseJoinToken, signerPeer } from '../../gateway/cluster/join.js';

const ca = createCa();

/** An RSA key pair as forge sees it (made by Node: forge's own generator is slow). */
function forgeKeys(bits: number): { publicKey: forge.pki.rsa.PublicKey; privateKey: forge.pki.rsa.PrivateKey } {
  const k = generateKeyPairSync('rsa', { modulusLength: bits });
  return {
    publicKey: forge.pki.publicKeyFromPem(k.publicKey.export({ type: 'spki', format: 'pem' }) as string) as forge.pki.rsa.PublicKey,
    privateKey: forge.pki.privateKeyFromPem(k.privateKey.export({ type: 'pkcs1', format: 'pem' }) as string) as forge.pki.rsa.PrivateKey,
  };
}

/** A PKCS#10 request for `cn` and `publicKey`, signed with `signer` (not necessarily its key). */
function request(cn: string, publicKey: forge.pki.rsa.PublicKey, signer: forge.pki.rsa.PrivateKey): string {
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = publicKey;
  csr.setSubject([{ shortName: 'CN', value: cn }]);
  csr.sign(signer, forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

t.test('a minted token pins the CA and carries 32 random bytes; Redis gets only their hash', async (t) => {
  const a = mintJoinToken(ca.cert);
  const b = mintJoinToken(ca.cert);
  t.match(a.token, /^opj1\.[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/);
  t.ok(a.token.length <= MAX_JOIN_TOKEN_CHARS);
  const parsed = parseJoinToken(a.token)!;
  t.equal(parsed.fingerprint, certificateFingerprint(ca.cert), 'the CA fingerprint');
  t.equal(parsed.fingerprint, new X509Certificate(ca.cert).fingerprint256.replaceAll(':', '').toLowerCase(), 'which is the SHA-256 of its DER');
  t.equal(parsed.secret.length, 32);
  t.equal(a.hash, createHash('sha256').update(parsed.secret).digest('hex'), 'the stored hash is the SHA-256 of the secret');
  t.equal(joinTokenHash(parsed.secret), a.hash);
  t.not(a.token, b.token, 'tokens differ');
  t.not(a.hash, b.hash);
  t.notOk(a.token.includes(a.hash), 'the hash cannot be read off the token text');
  t.equal(formatJoinToken(parsed), a.token, 'format and parse round-trip');
  t.same(parseJoinToken(`  ${a.token}\n`), parsed, 'a file\'s surrounding white space is fine');
});

t.test('anything else is not a token', async (t) => {
  const good = mintJoinToken(ca.cert).token;
  const [, fp, secret] = good.split('.');
  for (const bad of [
    '',
    'opj1',
    `opj2.${fp}.${secret}`,
    `opj1.${fp}`,
    `opj1.${fp}.${secret}.extra`,
    `opj1.${fp}.${secret!.slice(1)}`,
    `opj1.${fp}.${secret}A`,
    `opj1.${fp}.${secret!.slice(0, 42)}+`,
    `opj1.${fp!.slice(0, 42)}=.${secret}`,
    `opj1.${fp} .${secret}`,
    `${good}${' '.repeat(MAX_JOIN_TOKEN_CHARS)}`,
    'x'.repeat(10_000),
  ]) {
    t.equal(parseJoinToken(bad), undefined, JSON.stringify(bad.slice(0, 40)));
  }
});

t.test('a node request is signed only if it passes every check', async (t) => {
  const { csr, key } = createNodeRequest('n3');
  const req = readNodeRequest(csr, 'n3');
  const signed = signNodeRequest(ca, req, ['localhost', '127.0.0.1']);
  const node = new X509Certificate(signed.node);
  const server = new X509Certificate(signed.server);
  const caX = new X509Certificate(ca.cert);
  t.ok(node.checkIssued(caX) && node.verify(caX.publicKey), 'the node certificate is the CA\'s');
  t.ok(node.subject.split('\n').includes('CN=n3') && node.subject.split('\n').includes('OU=oneport-node'), 'for node n3');
  t.ok(node.checkPrivateKey(createPrivateKey(key)), 'for the key the node made');
  t.ok(server.checkPrivateKey(createPrivateKey(key)) && server.checkIssued(caX), 'and so is the server certificate');
  t.match(server.subjectAltName ?? '', /DNS:localhost/);

  const refused = (what: string, fn: () => unknown, message: RegExp): void => {
    t.throws(fn, NodeRequestError, what);
    try {
      fn();
    } catch (e) {
      t.match((e as Error).message, message, `${what}: says why`);
    }
  };
  refused('another node id', () => readNodeRequest(csr, 'n4'), /not for node "n4"/);
  refused('not PEM', () => readNodeRequest('hello', 'n3'), /not a PEM/);
  refused('too large', () => readNodeRequest(`${csr}${' '.repeat(9000)}`, 'n3'), /too large/);
  refused('bad names', () => signNodeRequest(ca, req, ['bad name!']), /./);

  // The signature must be made with the requested key: a request for key A signed with key B.
  const a = forgeKeys(2048);
  const b = forgeKeys(2048);
  refused('a signature by another key', () => readNodeRequest(request('n3', a.publicKey, b.privateKey), 'n3'), /signature/);
  const weak = forgeKeys(1024);
  refused('a 1024-bit key', () => readNodeRequest(request('n3', weak.publicKey, weak.privateKey), 'n3'), /2048/);
});

t.test('a node without the CA key passes join calls to the leader if it signs, else to the first live signer', async (t) => {
  const node = (id: string, signer: boolean, state = 'up') => ({ info: { id, address: `${id}:443`, version: 'x', capacity: 1, startedAt: 0, ...(signer ? { signer } : {}) }, state });
  const nodes = [node('c', true), node('b', true), node('a', false), node('d', true, 'suspect')];
  t.same(signerPeer(nodes, 'c', 'a'), { node: 'c', address: 'c:443' }, 'the leader');
  t.same(signerPeer(nodes, 'a', 'a'), { node: 'b', address: 'b:443' }, 'the leader does not sign: the first live signer');
  t.same(signerPeer(nodes, 'd', 'a'), { node: 'b', address: 'b:443' }, 'a suspect leader is passed over');
  t.equal(signerPeer([node('a', false)], 'a', 'a'), undefined, 'no signer: none');
});
