import t, { type Test } from 'tap';
import forge from 'node-forge';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import {
  type Pem,
  certificateMatchesName,
  certificateNames,
  createCa,
  issueClientCert,
  issueNodeCert,
  issueServerCert,
} from '../../certs/ca.js';
import { testPki } from '../helpers/certs.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

const DAY_MS = 24 * 3600 * 1000;
const ca = createCa();
const otherCa = createCa({ commonName: 'someone else' });
const { ca: testCa, server: testServer } = testPki();

const x509 = (pem: string): X509Certificate => new X509Certificate(pem);
const ECDSA_SHA256 = '1.2.840.10045.4.3.2';
/** forge reads RSA certificates only: an ECDSA key is swapped for a placeholder RSA key to read the rest. */
const PLACEHOLDER_SPKI = forge.pki.publicKeyToAsn1(forge.pki.setRsaPublicKey(new forge.jsbn.BigInteger('3'), new forge.jsbn.BigInteger('3')));
function forgeCert(pem: string): forge.pki.Certificate {
  const x = x509(pem);
  const node = forge.asn1.fromDer(x.raw.toString('binary'));
  const tbs = (node.value as forge.asn1.Asn1[])[0]?.value as forge.asn1.Asn1[];
  if (x.publicKey.asymmetricKeyType !== 'rsa') tbs[6] = PLACEHOLDER_SPKI;
  return forge.pki.certificateFromAsn1(node);
}
const ext = (pem: string, name: string): Record<string, unknown> | undefined => forgeCert(pem).getExtension(name) as Record<string, unknown> | undefined;

function issuedBy(leaf: string, issuer: string): boolean {
  const l = x509(leaf);
  const i = x509(issuer);
  return l.checkIssued(i) && l.verify(i.publicKey);
}

function validNow(t: Test, pem: string, what: string): void {
  const x = x509(pem);
  const now = Date.now();
  t.ok(new Date(x.validFrom).getTime() <= now, `${what}: notBefore <= now`);
  t.ok(now <= new Date(x.validTo).getTime(), `${what}: now <= notAfter`);
}

/** A TLS server on loopback, port 0; `secureConnection` and `tlsClientError` are awaited by tests. */
async function tlsServer(t: Teardown, options: tls.TlsOptions, host = '127.0.0.1'): Promise<{ server: tls.Server; port: number }> {
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(options, (s) => s.on('error', () => {})).listen(0, host);
  t.teardown(() => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }));
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', () => {});
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port };
}

/** Resolves on `secureConnect`, rejects on the first error. */
function connect(t: Teardown, options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect(options);
    t.teardown(() => s.destroy());
    s.once('error', reject);
    s.once('secureConnect', () => {
      s.removeListener('error', reject);
      s.on('error', () => {});
      resolve(s);
    });
  });
}

/** A client that does not wait for the outcome (the server side is what is checked). */
function connectQuietly(t: Teardown, options: tls.ConnectionOptions): void {
  const s = tls.connect(options);
  t.teardown(() => s.destroy());
  s.on('error', () => {});
}

t.test('the CA certificate', async (t) => {
  const x = x509(ca.cert);
  t.ok(x.ca, 'basicConstraints cA');
  t.ok(x.checkIssued(x) && x.verify(x.publicKey), 'self-signed');
  t.match(x.subject, /^CN=oneport cluster CA$/m, 'default common name');
  t.equal(x.publicKey.asymmetricKeyType, 'ec', 'ECDSA by default');
  t.equal(x.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1', 'P-256');
  t.ok(x.checkPrivateKey(createPrivateKey(ca.key)), 'the key belongs to the certificate');
  t.match(ca.key, /^-----BEGIN PRIVATE KEY-----\n/, 'PKCS#8 PEM');
  t.match(ext(ca.cert, 'basicConstraints'), { cA: true, critical: true });
  t.match(ext(ca.cert, 'keyUsage'), { keyCertSign: true, cRLSign: true, critical: true });
  t.notOk(ext(ca.cert, 'keyUsage')?.digitalSignature);
  t.ok(ext(ca.cert, 'subjectKeyIdentifier'), 'subjectKeyIdentifier');
  t.equal(forgeCert(ca.cert).siginfo.algorithmOid, ECDSA_SHA256, 'ECDSA with SHA-256');
  t.match(x.serialNumber, /^[0-7][0-9A-F]{31}$/i, '16 random bytes, positive');
  t.not(x.serialNumber, x509(otherCa.cert).serialNumber);
  const years = (new Date(x.validTo).getTime() - Date.now()) / DAY_MS;
  t.ok(Math.abs(years - 3650) < 1, `default 3650 days (${years.toFixed(2)})`);
  validNow(t, ca.cert, 'CA');

  const named = createCa({ commonName: 'Ünïcode CA, with comma', days: 10 });
  t.equal(certificateNames(named.cert).commonName, 'Ünïcode CA, with comma', 'UTF-8 common name round-trips');
  t.ok(Math.abs((new Date(x509(named.cert).validTo).getTime() - Date.now()) / DAY_MS - 10) < 1, 'days option');
  t.throws(() => createCa({ days: 0 }), /positive number of days/);
  t.throws(() => createCa({ commonName: '' }), /non-empty/);
});

t.test('server certificates', async (t) => {
  const server = issueServerCert(ca, ['Gateway.Example.COM', '127.0.0.1', '::1', '2001:DB8:0:0::1', '::ffff:10.1.2.3', '*.desk.example.com', 'gateway.example.com']);
  const x = x509(server.cert);
  t.ok(issuedBy(server.cert, ca.cert), 'the CA verifies it');
  t.notOk(issuedBy(server.cert, otherCa.cert), 'another CA does not');
  t.notOk(x.ca);
  t.ok(x.checkPrivateKey(createPrivateKey(server.key)));
  t.same(certificateNames(server.cert), {
    commonName: 'gateway.example.com',
    dns: ['gateway.example.com', '*.desk.example.com'],
    ips: ['127.0.0.1', '::1', '2001:db8::1', '::ffff:a01:203'],
    notAfter: new Date(x.validTo),
  }, 'CN is the first name; names lower-cased, IPs canonical, duplicates dropped');
  t.match(x.subjectAltName, /^DNS:gateway\.example\.com, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1, /);
  t.same(x.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'EKU serverAuth only');
  t.match(ext(server.cert, 'extKeyUsage'), { serverAuth: true });
  t.notOk(ext(server.cert, 'extKeyUsage')?.clientAuth);
  t.match(ext(server.cert, 'keyUsage'), { digitalSignature: true, critical: true });
  t.notOk(ext(server.cert, 'keyUsage')?.keyEncipherment, 'keyEncipherment is for RSA keys only');
  t.match(ext(server.cert, 'basicConstraints'), { cA: false, critical: true });
  t.ok(ext(server.cert, 'authorityKeyIdentifier'), 'authorityKeyIdentifier');
  t.equal(forgeCert(server.cert).siginfo.algorithmOid, ECDSA_SHA256);
  t.equal(x.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.match(x.serialNumber, /^[0-7][0-9A-F]{31}$/i);
  t.equal(x.issuer, x509(ca.cert).subject);
  validNow(t, server.cert, 'server');
  const notBefore = new Date(x.validFrom).getTime();
  const skewS = (Date.now() - notBefore) / 1000;
  t.ok(skewS >= 299 && skewS <= 302, `notBefore backdated 5 minutes (${skewS} s)`);
  const days = (new Date(x.validTo).getTime() - Date.now()) / DAY_MS;
  t.ok(Math.abs(days - 825) < 1, `825 days by default (${days.toFixed(2)})`);

  const short = x509(issueServerCert(ca, ['localhost'], { days: 2, notBeforeSkewMs: 0 }).cert);
  t.ok(Date.now() - new Date(short.validFrom).getTime() < 2000, 'no backdating when asked');
  t.ok(Math.abs((new Date(short.validTo).getTime() - Date.now()) / DAY_MS - 2) < 0.01, 'days option');
});

t.test('node and client certificates', async (t) => {
  const node = issueNodeCert(ca, 'node-1', ['node-1.cluster.internal', '10.0.0.1']);
  const nx = x509(node.cert);
  t.ok(issuedBy(node.cert, ca.cert));
  t.same(certificateNames(node.cert), {
    commonName: 'node-1',
    organizationalUnit: 'oneport-node',
    dns: ['node-1.cluster.internal'],
    ips: ['10.0.0.1'],
    notAfter: new Date(nx.validTo),
  });
  t.same([...(nx.keyUsage ?? [])].sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'EKU serverAuth + clientAuth');
  t.match(ext(node.cert, 'extKeyUsage'), { serverAuth: true, clientAuth: true });
  t.ok(Math.abs((new Date(nx.validTo).getTime() - Date.now()) / DAY_MS - 365) < 1, '365 days by default');
  validNow(t, node.cert, 'node');

  const client = issueClientCert(ca, 'alice@example.com');
  const cx = x509(client.cert);
  t.ok(issuedBy(client.cert, ca.cert));
  t.notOk(issuedBy(client.cert, otherCa.cert));
  t.same(certificateNames(client.cert), {
    commonName: 'alice@example.com',
    organizationalUnit: 'oneport-user',
    dns: [],
    ips: [],
    notAfter: new Date(cx.validTo),
  });
  t.equal(cx.subjectAltName, undefined, 'no SANs');
  t.same(cx.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'EKU clientAuth only');
  t.notOk(ext(client.cert, 'extKeyUsage')?.serverAuth);
  t.match(ext(client.cert, 'keyUsage'), { digitalSignature: true, critical: true });
  t.ok(Math.abs((new Date(cx.validTo).getTime() - Date.now()) / DAY_MS - 365) < 1, '365 days by default');
  validNow(t, client.cert, 'client');

  const shortCa = createCa({ days: 2 });
  const capped = issueNodeCert(shortCa, 'node-2', ['node-2']);
  t.ok(new Date(x509(capped.cert).validTo) <= new Date(x509(shortCa.cert).validTo), 'never outlives its CA');
});

t.test('inputs are validated', async (t) => {
  t.throws(() => issueServerCert(ca, []), /at least one DNS name or IP address/);
  t.throws(() => issueNodeCert(ca, 'n', []), /at least one DNS name or IP address/);
  const bad = [
    '', ' ', 'exa mple.com', '-bad.com', 'bad-.com', 'a..b', '.example.com', 'example.com.', 'under_score.com',
    `${'a'.repeat(64)}.com`, `${'a.'.repeat(127)}com`, '*', '*.com', 'a.*.example.com', 'f*.example.com', '**.example.com',
    '1.2.3.256', '01.2.3.4', '1.2.3', '123', '[::1]', 'fe80::1%eth0', '::1::2', 'https://example.com', 'bücher.example',
  ];
  for (const name of bad) t.throws(() => issueServerCert(ca, ['localhost', name]), { message: /DNS name or IP address|non-empty|without brackets/ }, JSON.stringify(name));
  t.throws(() => issueServerCert(ca, ['[::1]']), /write IPv6 addresses without brackets/);
  t.throws(() => issueServerCert(ca, ['nope nope']), /not a DNS name or IP address: "nope nope"/);
  t.throws(() => issueNodeCert(ca, '', ['x']), /node id must be a non-empty string/);
  t.throws(() => issueNodeCert(ca, 'a'.repeat(65), ['x']), /node id is longer than 64/);
  t.throws(() => issueClientCert(ca, ''), /user name must be a non-empty string/);
  t.throws(() => issueClientCert(ca, 'bob\nadmin'), /control characters/);
  t.throws(() => issueServerCert(ca, ['localhost'], { days: -1 }), /positive number of days/);
  t.throws(() => issueServerCert(ca, ['localhost'], { days: Number.NaN }), /positive number of days/);
  t.throws(() => issueServerCert(ca, ['localhost'], { notBeforeSkewMs: -1 }), /notBeforeSkewMs/);
  t.throws(() => issueServerCert({ cert: ca.cert, key: otherCa.key }, ['localhost']), /does not belong to the CA certificate/);
  t.throws(() => issueServerCert(testServer, ['localhost']), /is not a CA certificate/);
  t.throws(() => issueServerCert({ cert: 'not a certificate', key: ca.key }, ['localhost']), /cannot read the CA certificate/);
  t.throws(() => issueServerCert({ cert: ca.cert, key: 'not a key' }, ['localhost']), /cannot read the CA private key/);
});

t.test('name matching (RFC 6125)', async (t) => {
  const server = issueServerCert(ca, ['*.example.com', 'Exact.Test', '10.0.0.1', '2001:db8::1']);
  const table: Array<[string, boolean]> = [
    ['a.example.com', true],
    ['A.EXAMPLE.COM', true],
    ['a.example.com.', true],
    ['xn--bcher-kva.example.com', true],
    ['example.com', false],
    ['a.b.example.com', false],
    ['.example.com', false],
    ['aexample.com', false],
    ['a.example.org', false],
    ['*.example.com', false],
    ['exact.test', true],
    ['EXACT.test', true],
    ['x.exact.test', false],
    ['exact.test.evil', false],
    ['10.0.0.1', true],
    ['10.0.0.2', false],
    ['2001:db8::1', true],
    ['2001:DB8:0:0:0:0:0:1', true],
    ['[2001:db8::1]', true],
    ['2001:db8::2', false],
    ['', false],
  ];
  for (const [name, want] of table) t.equal(certificateMatchesName(server.cert, name), want, `${JSON.stringify(name)} ${want ? 'matches' : 'does not match'}`);

  // CN only counts when there are no SANs at all, and never for IP addresses.
  const node = issueNodeCert(ca, 'node-7.example', ['10.0.0.7']);
  t.notOk(certificateMatchesName(node.cert, 'node-7.example'), 'CN ignored when the certificate has SANs');
  t.ok(certificateMatchesName(node.cert, '10.0.0.7'));
  const cnOnly = issueClientCert(ca, 'cn-only.example');
  t.ok(certificateMatchesName(cnOnly.cert, 'CN-Only.example'), 'CN used when there are no SANs');
  t.notOk(certificateMatchesName(cnOnly.cert, 'x.cn-only.example'));
  const ipCn = issueClientCert(ca, '10.9.9.9');
  t.notOk(certificateMatchesName(ipCn.cert, '10.9.9.9'), 'IP literals only match IP SANs');

  const names = certificateNames(server.cert);
  names.dns.push('mutated.example');
  t.notOk(certificateMatchesName(server.cert, 'mutated.example'), 'returned names are copies');
});

t.test('certificates made elsewhere are read with X509Certificate', async (t) => {
  // Built with forge directly: odd SANs no oneport certificate would have.
  const leaf = issueClientCert(ca, 'key donor', { keyType: 'rsa' });
  const priv = forge.pki.privateKeyFromPem(leaf.key) as forge.pki.rsa.PrivateKey;
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(priv.n, priv.e);
  cert.serialNumber = '01';
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + DAY_MS);
  cert.setSubject([{ shortName: 'CN', value: 'ignored.example' }, { shortName: 'OU', value: 'first' }, { shortName: 'OU', value: 'second' }]);
  cert.setIssuer(cert.subject.attributes);
  cert.setExtensions([
    {
      name: 'subjectAltName',
      altNames: [
        { type: 2, value: 'evil, DNS:x.com' },
        { type: 6, value: 'https://u.example/, IP Address:1.1.1.1' },
        { type: 2, value: '*.com' },
        { type: 2, value: 'f*.example.net' },
        { type: 2, value: 'ok.example' },
      ],
    },
  ]);
  cert.sign(priv, forge.md.sha256.create());
  const pem = forge.pki.certificateToPem(cert);
  const names = certificateNames(`${pem}${ca.cert}`);
  t.same(names.dns, ['evil, DNS:x.com', '*.com', 'f*.example.net', 'ok.example'], 'quoted SAN entries are not split');
  t.same(names.ips, []);
  t.equal(names.commonName, 'ignored.example');
  t.equal(names.organizationalUnit, 'first');
  t.notOk(certificateMatchesName(pem, 'x.com'));
  t.notOk(certificateMatchesName(pem, '1.1.1.1'));
  t.notOk(certificateMatchesName(pem, 'anything.com'), '`*.com` is too broad to match');
  t.notOk(certificateMatchesName(pem, 'foo.example.net'), 'partial wildcards do not match');
  t.ok(certificateMatchesName(pem, 'ok.example'));
  t.throws(() => certificateNames('not a certificate'));
});

t.test('TLS handshake with a server certificate', async (t) => {
  t.ok(issuedBy(testServer.cert, testCa.cert), 'testPki server is issued by the testPki CA');
  t.equal(testPki().server.cert, testServer.cert, 'testPki is cached per process');
  t.ok((new Date(x509(testServer.cert).validTo).getTime() - Date.now()) / DAY_MS <= 1, 'test certificates live one day');
  const { port } = await tlsServer(t, { cert: testServer.cert, key: testServer.key }, '::');

  const ok = await connect(t, { host: '127.0.0.1', port, servername: 'localhost', ca: [testCa.cert] });
  t.ok(ok.authorized, 'trusting only the CA, localhost verifies');
  t.equal(ok.getPeerCertificate().subject.CN, 'localhost');
  ok.destroy();
  const byIp = await connect(t, { host: '127.0.0.1', port, ca: [testCa.cert] });
  t.ok(byIp.authorized, '127.0.0.1 verifies by IP SAN');
  byIp.destroy();
  const byIp6 = await connect(t, { host: '::1', port, ca: [testCa.cert] });
  t.ok(byIp6.authorized, '::1 verifies by IP SAN');
  byIp6.destroy();

  await t.rejects(connect(t, { host: '127.0.0.1', port, servername: 'localhost', ca: [otherCa.cert] }), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, 'a client trusting another CA refuses it');
  await t.rejects(connect(t, { host: '127.0.0.1', port, servername: 'other.example', ca: [testCa.cert] }), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, 'a name not in the certificate is refused');
});

t.test('RSA is still accepted: RSA CAs sign ECDSA keys and the other way round', async (t) => {
  const rsaCa = createCa({ keyType: 'rsa' });
  t.equal(x509(rsaCa.cert).publicKey.asymmetricKeyDetails?.modulusLength, 2048, 'RSA 2048 CA');
  t.equal(forgeCert(rsaCa.cert).siginfo.algorithmOid, forge.pki.oids.sha256WithRSAEncryption);
  for (const [issuer, keyType] of [[rsaCa, 'ec'], [rsaCa, 'rsa'], [ca, 'rsa']] as const) {
    const server = issueServerCert(issuer, ['localhost'], { keyType });
    const what = `${x509(issuer.cert).publicKey.asymmetricKeyType} CA, ${keyType} key`;
    t.ok(issuedBy(server.cert, issuer.cert), `${what}: the CA verifies it`);
    t.equal(x509(server.cert).publicKey.asymmetricKeyType, keyType);
    t.equal(ext(server.cert, 'keyUsage')?.keyEncipherment ?? false, keyType === 'rsa', `${what}: keyEncipherment for RSA only`);
    const { port } = await tlsServer(t, { cert: server.cert, key: server.key });
    const s = await connect(t, { host: '127.0.0.1', port, servername: 'localhost', ca: [issuer.cert] });
    t.ok(s.authorized, `${what}: TLS verifies`);
    s.destroy();
  }
});

t.test('a client certificate cannot serve TLS', async (t) => {
  const client = issueClientCert(ca, 'localhost');
  const { port } = await tlsServer(t, { cert: client.cert, key: client.key });
  await t.rejects(connect(t, { host: '127.0.0.1', port, servername: 'localhost', ca: [ca.cert] }), { code: 'INVALID_PURPOSE' });
});

t.test('mutual TLS: node and user certificates', async (t) => {
  const nodeA = issueNodeCert(ca, 'node-a', ['node-a.cluster', '127.0.0.1']);
  const nodeB = issueNodeCert(ca, 'node-b', ['node-b.cluster']);
  const user = issueClientCert(ca, 'alice');
  const { server, port } = await tlsServer(t, { cert: nodeA.cert, key: nodeA.key, ca: [ca.cert], requestCert: true, rejectUnauthorized: true });
  const client = (pem: Pem | undefined, peerCa = ca.cert): tls.ConnectionOptions => ({
    host: '127.0.0.1',
    port,
    servername: 'node-a.cluster',
    ca: [peerCa],
    ...(pem ? { cert: pem.cert, key: pem.key } : {}),
  });

  for (const [who, pem, ou, cn] of [['node', nodeB, 'oneport-node', 'node-b'], ['user', user, 'oneport-user', 'alice']] as const) {
    const accepted = once(server, 'secureConnection') as Promise<[tls.TLSSocket]>;
    const s = await connect(t, client(pem));
    t.ok(s.authorized, `${who}: the client verifies the node's certificate`);
    const [peer] = await accepted;
    t.ok(peer.authorized, `${who}: the server accepts the client certificate`);
    const subject = peer.getPeerCertificate().subject;
    t.equal(subject.OU, ou, `${who}: OU tells node from user`);
    t.equal(subject.CN, cn);
    s.destroy();
  }

  // Refused with the reason lost (Node destroys the socket; the server sees a hang-up), so the
  // reasons are read from a server that asks for a certificate but lets the handshake finish.
  const intruder = issueNodeCert(otherCa, 'intruder', ['intruder']);
  const serverOnly = issueServerCert(ca, ['localhost']);
  for (const [what, pem] of [['no client certificate', undefined], ['a certificate from another CA', intruder], ['a server-only certificate', serverOnly]] as const) {
    const refused = once(server, 'tlsClientError') as Promise<[Error]>;
    connectQuietly(t, client(pem));
    const [err] = await refused;
    t.ok(err, `${what} is refused (${err.message})`);
  }
  const lenient = await tlsServer(t, { cert: nodeA.cert, key: nodeA.key, ca: [ca.cert], requestCert: true, rejectUnauthorized: false });
  const reasons: Array<[string, Pem, string | undefined]> = [
    ['another CA', intruder, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ['EKU serverAuth only', serverOnly, 'INVALID_PURPOSE'],
    ['a node certificate', nodeB, undefined],
  ];
  for (const [what, pem, code] of reasons) {
    const accepted = once(lenient.server, 'secureConnection') as Promise<[tls.TLSSocket]>;
    connectQuietly(t, { ...client(pem), port: lenient.port });
    const [peer] = await accepted;
    t.equal(peer.authorized, code === undefined, `${what}: authorized is ${code === undefined}`);
    t.equal(peer.authorizationError === undefined || peer.authorizationError === null ? undefined : String(peer.authorizationError), code, `${what}: ${code ?? 'no error'}`);
  }
});
