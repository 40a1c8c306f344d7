/**
 * The cluster certificate authority: a self-signed CA and the certificates it signs, for
 * gateway servers (SAN names users type), cluster nodes (node-to-node mutual TLS, OU
 * `oneport-node`) and users (client certificates, OU `oneport-user`). Plus reading names back
 * out of any PEM certificate and RFC 6125 name matching, which the SNI callback uses.
 *
 * Keys are ECDSA P-256 by default (a TLS handshake signs with it several times cheaper than with
 * RSA 2048, and the certificate is smaller); `keyType: 'rsa'` makes RSA 2048, and CAs of either
 * type sign keys of either type. Node makes the keys (`crypto.generateKeyPairSync`) and the
 * signatures (`crypto.sign`); node-forge builds the TBSCertificate (subject, SANs, extensions)
 * around a placeholder key, since it writes RSA keys only, and the real SubjectPublicKeyInfo,
 * issuer name and signature algorithm are put in its place. Node requests (PKCS#10, read by
 * forge) stay RSA. Private keys are returned as PKCS#8 PEM. Parsing uses Node's
 * `X509Certificate`, so it also works for user-provided certificates forge cannot read.
 */
import { type KeyObject, X509Certificate, createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import forge from 'node-forge';

export interface Pem {
  cert: string;
  key: string;
}

export interface CaOptions {
  /** @default 'oneport cluster CA' */
  commonName?: string;
  /** @default 3650 */
  days?: number;
  /** @default 'ec' (ECDSA P-256) */
  keyType?: KeyType;
}

export interface LeafOptions {
  /** @default 825 for servers, 365 for nodes and clients (never past the CA's own notAfter) */
  days?: number;
  /** Backdate notBefore so peers whose clocks are a little behind accept it. @default 5 minutes */
  notBeforeSkewMs?: number;
  /** @default 'ec' (ECDSA P-256) */
  keyType?: KeyType;
}

export interface CertificateNames {
  commonName?: string;
  organizationalUnit?: string;
  /** DNS SAN entries as written in the certificate. */
  dns: string[];
  /** IP SAN entries, IPv6 in canonical compressed lower-case form (`::1`). */
  ips: string[];
  notAfter: Date;
}

/** Subject OU of node certificates. */
export const NODE_OU = 'oneport-node';
/** Subject OU of user (client) certificates. */
export const USER_OU = 'oneport-user';

const DAY_MS = 24 * 3600 * 1000;
const DEFAULT_SKEW_MS = 5 * 60_000;
/** X.520 ub-common-name. */
const MAX_CN = 64;
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const SHA256_RSA = forge.pki.oids.sha256WithRSAEncryption as string;
const ECDSA_SHA256 = '1.2.840.10045.4.3.2';

// ---------------------------------------------------------------------------------------------
// Keys, serials, signing

/** What a key made here is: ECDSA P-256 unless asked for RSA 2048. */
export type KeyType = 'ec' | 'rsa';

interface KeyPair {
  /** DER SubjectPublicKeyInfo, for the certificate. */
  spki: Buffer;
  privateKey: KeyObject;
}

function newKeyPair(type: KeyType = 'ec'): KeyPair {
  const { publicKey, privateKey } = type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { spki: publicKey.export({ type: 'spki', format: 'der' }), privateKey };
}

function privateKeyPem(key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/** 16 random bytes, top bit clear so the DER INTEGER is positive; never all-zero leading byte. */
function serialNumber(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] ?? 0) & 0x7f) | 0x01;
  return b.toString('hex');
}

const getCertificationRequestInfo = (forge.pki as unknown as { getCertificationRequestInfo(csr: forge.pki.CertificateSigningRequest): forge.asn1.Asn1 }).getCertificationRequestInfo;
const getTBSCertificate = (forge.pki as unknown as { getTBSCertificate(cert: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate;
const { asn1 } = forge;
const der = (node: forge.asn1.Asn1): Buffer => Buffer.from(asn1.toDer(node).getBytes(), 'binary');
/** forge's types miss the options form; without it, forge parses BIT STRING contents as DER. */
const fromDerWithOptions = asn1.fromDer as unknown as (bytes: string, options: { decodeBitStrings: boolean }) => forge.asn1.Asn1;
const fromDer = (b: Buffer): forge.asn1.Asn1 => fromDerWithOptions(b.toString('binary'), { decodeBitStrings: false });
const seq = (parts: forge.asn1.Asn1[]): forge.asn1.Asn1 => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, parts);
const oid = (id: string): forge.asn1.Asn1 => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(id).getBytes());
/**
 * AlgorithmIdentifier of the signature a key makes: sha256WithRSAEncryption with NULL parameters
 * (RFC 4055), ecdsa-with-SHA256 without parameters (RFC 5758).
 */
function signatureAlgorithm(key: KeyObject): forge.asn1.Asn1 {
  return key.asymmetricKeyType === 'ec' ? seq([oid(ECDSA_SHA256)]) : seq([oid(SHA256_RSA), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')]);
}

/**
 * forge writes RSA public keys only; it builds the TBSCertificate around a placeholder key whose
 * SubjectPublicKeyInfo is then swapped for the real one (any key type), as the issuer's name
 * (the CA's own DER) and the signature algorithm of the issuer's key.
 */
const PLACEHOLDER_KEY = forge.pki.setRsaPublicKey(new forge.jsbn.BigInteger('3'), new forge.jsbn.BigInteger('3'));
const TBS_SIGNATURE = 2;
const TBS_ISSUER = 3;
const TBS_SPKI = 6;

/** RFC 5280 4.2.1.2 method (1): SHA-1 of the subjectPublicKey bits. */
function keyIdentifier(spki: Buffer): string {
  const bits = (fromDer(spki).value as forge.asn1.Asn1[])[1]?.value as string;
  return createHash('sha1').update(Buffer.from(bits.slice(1), 'binary')).digest().toString('binary');
}

/** What `cert.sign(key, sha256)` does, for any public key and any CA key type, signed by Node. */
function signCertificate(cert: forge.pki.Certificate, spki: Buffer, issuerName: forge.asn1.Asn1 | undefined, key: KeyObject): string {
  cert.publicKey = PLACEHOLDER_KEY;
  cert.siginfo.algorithmOid = SHA256_RSA;
  const tbs = getTBSCertificate(cert);
  const parts = tbs.value as forge.asn1.Asn1[];
  const algorithm = signatureAlgorithm(key);
  parts[TBS_SIGNATURE] = algorithm;
  if (issuerName) parts[TBS_ISSUER] = issuerName;
  parts[TBS_SPKI] = fromDer(spki);
  const signature = sign('sha256', der(tbs), key);
  const body = der(seq([tbs, signatureAlgorithm(key), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, `\0${signature.toString('binary')}`)]));
  return `-----BEGIN CERTIFICATE-----\n${body.toString('base64').replace(/.{64}(?=.)/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
}

/** A subject attribute encoded as UTF8String (RFC 5280 4.1.2.6); forge defaults to PrintableString. */
function attr(shortName: 'CN' | 'O' | 'OU', value: string): forge.pki.CertificateField {
  // @types/node-forge types valueTagClass as asn1.Class, but forge reads it as an asn1.Type.
  return { shortName, value, valueTagClass: forge.asn1.Type.UTF8 as unknown as forge.asn1.Class };
}

function checkDays(days: number, what: string): number {
  if (!Number.isFinite(days) || days <= 0) throw new Error(`${what} validity must be a positive number of days, got ${days}`);
  return days;
}

function checkSkew(ms: number): number {
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`notBeforeSkewMs must be a non-negative number of milliseconds, got ${ms}`);
  return ms;
}

/** Common names and the like: non-empty, at most 64 characters, no control characters. */
function checkName(value: string, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new Error(`${what} must be a non-empty string`);
  if (value.length > MAX_CN) throw new Error(`${what} is longer than ${MAX_CN} characters: ${JSON.stringify(value)}`);
  if (/\p{Cc}/u.test(value)) throw new Error(`${what} contains control characters: ${JSON.stringify(value)}`);
  return value;
}

// ---------------------------------------------------------------------------------------------
// The CA

export function createCa(opts: CaOptions = {}): Pem {
  const commonName = checkName(opts.commonName ?? 'oneport cluster CA', 'CA common name');
  const days = checkDays(opts.days ?? 3650, 'CA');
  const keys = newKeyPair(opts.keyType);
  const cert = forge.pki.createCertificate();
  cert.serialNumber = serialNumber();
  const now = Date.now();
  cert.validity.notBefore = new Date(now - DEFAULT_SKEW_MS);
  cert.validity.notAfter = new Date(now + days * DAY_MS);
  const name = [attr('CN', commonName), attr('O', 'oneport')];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    // It signs end-entity certificates only.
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    subjectKeyIdentifier(keys.spki),
  ]);
  return { cert: signCertificate(cert, keys.spki, undefined, keys.privateKey), key: privateKeyPem(keys.privateKey) };
}

interface LoadedCa {
  /** The CA's subject as its own DER has it, so the names compare byte for byte. */
  subject: forge.asn1.Asn1;
  key: KeyObject;
  notAfter: number;
  keyIdentifier: string;
}

/** The subjectKeyIdentifier extension for a public key, computed here (forge does RSA only). */
function subjectKeyIdentifier(spki: Buffer): object {
  return { name: 'subjectKeyIdentifier', value: asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, keyIdentifier(spki)) };
}

const SKI_OID = '2.5.29.14';
const RSA_ENCRYPTION = '1.2.840.113549.1.1.1';

/** keyEncipherment means something for RSA keys only (RSA key transport in TLS 1.2). */
function isRsa(spki: Buffer): boolean {
  const algorithm = ((fromDer(spki).value as forge.asn1.Asn1[])[0]?.value as forge.asn1.Asn1[] | undefined)?.[0];
  return asn1.derToOid(algorithm?.value as string) === RSA_ENCRYPTION;
}

function loadCa(ca: Pem): LoadedCa {
  let x: X509Certificate;
  let tbs: forge.asn1.Asn1[];
  let key: KeyObject;
  try {
    x = new X509Certificate(ca.cert);
    tbs = ((fromDer(x.raw).value as forge.asn1.Asn1[])[0]?.value ?? []) as forge.asn1.Asn1[];
  } catch (e) {
    throw new Error(`cannot read the CA certificate (PEM, ECDSA or RSA key): ${(e as Error).message}`);
  }
  try {
    key = createPrivateKey(ca.key);
  } catch (e) {
    throw new Error(`cannot read the CA private key (unencrypted PEM): ${(e as Error).message}`);
  }
  if (!x.ca) throw new Error(`the CA certificate (${x.subject.replace(/\n/g, ', ')}) is not a CA certificate`);
  if (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'ec') throw new Error(`the CA key must be ECDSA or RSA, got ${key.asymmetricKeyType}`);
  if (!x.checkPrivateKey(key)) throw new Error('the CA private key does not belong to the CA certificate');
  const notAfter = new Date(x.validTo).getTime();
  if (notAfter <= Date.now()) throw new Error(`the CA certificate expired on ${new Date(notAfter).toISOString()}`);
  // v3 certificates start with the explicit [0] version.
  const at = tbs[0]?.tagClass === asn1.Class.CONTEXT_SPECIFIC ? 1 : 0;
  const subject = tbs[at + 4];
  const spki = tbs[at + 5];
  if (!subject || !spki) throw new Error('cannot read the CA certificate: no subject or public key');
  // authorityKeyIdentifier must equal the CA's subjectKeyIdentifier when it has one (OpenSSL
  // checks); CAs made elsewhere may have computed theirs differently from us.
  return { subject, key, notAfter, keyIdentifier: caKeyIdentifier(tbs) ?? keyIdentifier(der(spki)) };
}

/** The subjectKeyIdentifier extension's value in a TBSCertificate, if it has one. */
function caKeyIdentifier(tbs: forge.asn1.Asn1[]): string | undefined {
  const extensions = tbs.find((n) => n.tagClass === asn1.Class.CONTEXT_SPECIFIC && n.type === 3);
  for (const ext of ((extensions?.value as forge.asn1.Asn1[] | undefined)?.[0]?.value ?? []) as forge.asn1.Asn1[]) {
    const parts = ext.value as forge.asn1.Asn1[];
    if (asn1.derToOid(parts[0]?.value as string) !== SKI_OID) continue;
    const octets = parts[parts.length - 1]?.value as string;
    // extnValue holds the DER of an OCTET STRING: the identifier itself.
    return (asn1.fromDer(octets).value as string) || undefined;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Names

type SanName = { type: 'dns'; value: string } | { type: 'ip'; value: string; bytes: Buffer };

function parseName(name: string): SanName {
  if (typeof name !== 'string' || name.length === 0) throw new Error('certificate names must be non-empty strings');
  if (isIPv4(name)) return { type: 'ip', value: name, bytes: Buffer.from(name.split('.').map(Number)) };
  if (isIPv6(name) && !name.includes('%')) return { type: 'ip', value: canonicalIPv6(name), bytes: ipv6Bytes(name) };
  if (/^\[.*\]$/.test(name)) throw new Error(`write IPv6 addresses without brackets: ${JSON.stringify(name)}`);
  const dns = name.toLowerCase();
  const labels = dns.split('.');
  const wildcard = labels[0] === '*';
  const rest = wildcard ? labels.slice(1) : labels;
  const valid =
    dns.length <= 253 &&
    rest.length > 0 &&
    rest.every((l) => LABEL.test(l)) &&
    // A top-level label is never all digits; this also catches malformed addresses like 1.2.3.256.
    !/^[0-9]+$/.test(rest[rest.length - 1] ?? '') &&
    // `*.com` would be far too broad, and clients refuse it anyway.
    (!wildcard || rest.length >= 2);
  if (!valid) throw new Error(`not a DNS name or IP address: ${JSON.stringify(name)}`);
  return { type: 'dns', value: dns };
}

/** Validated, lower-cased and de-duplicated SAN names. */
function parseNames(names: readonly string[], what: string): SanName[] {
  if (!Array.isArray(names) || names.length === 0) throw new Error(`a ${what} certificate needs at least one DNS name or IP address`);
  const seen = new Set<string>();
  const out: SanName[] = [];
  for (const n of names) {
    const parsed = parseName(n);
    const key = `${parsed.type}:${parsed.value}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(parsed);
  }
  return out;
}

/** 16 bytes of a valid IPv6 literal (without zone), including the `::ffff:1.2.3.4` forms. */
function ipv6Bytes(ip: string): Buffer {
  const out = Buffer.alloc(16);
  let text = ip;
  let ipv4: number[] | undefined;
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    ipv4 = text.slice(lastColon + 1).split('.').map(Number);
    text = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [head = '', rest] = text.split('::');
  const h = head ? head.split(':') : [];
  const r = rest ? rest.split(':') : [];
  const groups = rest === undefined ? h : [...h, ...new Array<string>(8 - h.length - r.length).fill('0'), ...r];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  if (ipv4) Buffer.from(ipv4).copy(out, 12);
  return out;
}

/** RFC 5952 form (lower case, longest zero run compressed), via the WHATWG URL parser. */
function canonicalIPv6(ip: string): string {
  try {
    return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return ip.toLowerCase();
  }
}

function canonicalIp(ip: string): string {
  return ip.includes(':') ? canonicalIPv6(ip) : ip;
}

// ---------------------------------------------------------------------------------------------
// Leaf certificates

interface LeafSpec {
  commonName: string;
  organizationalUnit?: string;
  names: SanName[];
  serverAuth: boolean;
  clientAuth: boolean;
  days: number;
}

function issue(ca: Pem, spec: LeafSpec, opts: LeafOptions): Pem {
  const keys = newKeyPair(opts.keyType);
  return { cert: issueFor(ca, spec, opts, keys.spki), key: privateKeyPem(keys.privateKey) };
}

/** A certificate for the key `spki` (made here, or from a node's certificate request). */
function issueFor(ca: Pem, spec: LeafSpec, opts: LeafOptions, spki: Buffer): string {
  const days = checkDays(opts.days ?? spec.days, 'certificate');
  const skew = checkSkew(opts.notBeforeSkewMs ?? DEFAULT_SKEW_MS);
  const issuer = loadCa(ca);
  const cert = forge.pki.createCertificate();
  cert.serialNumber = serialNumber();
  const now = Date.now();
  cert.validity.notBefore = new Date(now - skew);
  cert.validity.notAfter = new Date(Math.min(now + days * DAY_MS, issuer.notAfter));
  const subject = [attr('CN', spec.commonName), attr('O', 'oneport')];
  if (spec.organizationalUnit) subject.push(attr('OU', spec.organizationalUnit));
  cert.setSubject(subject);
  const extensions: object[] = [
    { name: 'basicConstraints', cA: false, critical: true },
    spec.serverAuth
      ? { name: 'keyUsage', digitalSignature: true, keyEncipherment: isRsa(spki), critical: true }
      : { name: 'keyUsage', digitalSignature: true, critical: true },
    { name: 'extKeyUsage', serverAuth: spec.serverAuth, clientAuth: spec.clientAuth },
    subjectKeyIdentifier(spki),
    { name: 'authorityKeyIdentifier', keyIdentifier: issuer.keyIdentifier },
  ];
  if (spec.names.length > 0) {
    extensions.push({
      name: 'subjectAltName',
      // 2 = dNSName (IA5String), 7 = iPAddress (4 or 16 raw bytes).
      altNames: spec.names.map((n) => (n.type === 'dns' ? { type: 2, value: n.value } : { type: 7, value: n.bytes.toString('binary') })),
    });
  }
  cert.setExtensions(extensions);
  return signCertificate(cert, spki, issuer.subject, issuer.key);
}

/** A TLS server certificate: SANs for every name, CN = the first name, EKU serverAuth. */
export function issueServerCert(ca: Pem, names: readonly string[], opts: LeafOptions = {}): Pem {
  const sans = parseNames(names, 'server');
  const first = sans[0] as SanName;
  return issue(ca, { commonName: first.value, names: sans, serverAuth: true, clientAuth: false, days: 825 }, opts);
}

/** A cluster node's certificate for mutual TLS both ways: CN = nodeId, OU = oneport-node. */
export function issueNodeCert(ca: Pem, nodeId: string, names: readonly string[], opts: LeafOptions = {}): Pem {
  const commonName = checkName(nodeId, 'node id');
  const sans = parseNames(names, 'node');
  return issue(ca, { commonName, organizationalUnit: NODE_OU, names: sans, serverAuth: true, clientAuth: true, days: 365 }, opts);
}

/** SHA-256 of a certificate's DER, lower-case hex: what a join token pins the cluster CA by. */
export function certificateFingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256.replaceAll(':', '').toLowerCase();
}

/** A node's certificate request failed a check: the message says which (no secrets in it). */
export class NodeRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NodeRequestError';
  }
}

/** Largest certificate request accepted (a 4096-bit RSA request is about 1.7 KB of PEM). */
export const MAX_NODE_REQUEST_CHARS = 8192;
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 8192;

/**
 * A new key and a PKCS#10 request for node `nodeId`'s certificate (subject CN = nodeId, OU
 * oneport-node), signed with that key: the key never leaves the node that asks.
 */
export function createNodeRequest(nodeId: string): { csr: string; key: string } {
  const commonName = checkName(nodeId, 'node id');
  // RSA: forge, which reads the requests, knows RSA keys only.
  const keys = newKeyPair('rsa');
  const key = privateKeyPem(keys.privateKey);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromAsn1(asn1.fromDer(keys.spki.toString('binary')));
  csr.setSubject([attr('CN', commonName), attr('O', 'oneport'), attr('OU', NODE_OU)]);
  // What `csr.sign(key, sha256)` does, with the RSA operation done by Node (as signCertificate).
  csr.signatureOid = SHA256_RSA;
  csr.siginfo.algorithmOid = SHA256_RSA;
  csr.certificationRequestInfo = getCertificationRequestInfo(csr);
  const info = Buffer.from(forge.asn1.toDer(csr.certificationRequestInfo).getBytes(), 'binary');
  csr.signature = sign('sha256', info, keys.privateKey).toString('binary');
  return { csr: forge.pki.certificationRequestToPem(csr), key };
}

/** A node's certificate request that passed every check (readNodeRequest), ready to sign. */
export interface NodeRequest {
  readonly nodeId: string;
  readonly publicKey: forge.pki.rsa.PublicKey;
}

/**
 * Check a node's certificate request: one PEM PKCS#10 request of bounded size whose signature
 * verifies (the asker holds the key), for subject CN `nodeId` exactly, with an RSA key of 2048 to
 * 8192 bits. Throws NodeRequestError.
 */
export function readNodeRequest(csrPem: string, nodeId: string): NodeRequest {
  if (typeof csrPem !== 'string' || csrPem.length > MAX_NODE_REQUEST_CHARS) throw new NodeRequestError('the certificate request is missing or too large');
  let csr: forge.pki.CertificateSigningRequest;
  try {
    csr = forge.pki.certificationRequestFromPem(csrPem);
  } catch {
    throw new NodeRequestError('the certificate request is not a PEM PKCS#10 request with an RSA key');
  }
  let verified = false;
  try {
    verified = csr.verify();
  } catch {
    verified = false;
  }
  if (!verified) throw new NodeRequestError('the certificate request\'s signature does not verify');
  const cn = csr.subject.getField('CN') as { value?: unknown } | null;
  if (cn?.value !== nodeId) throw new NodeRequestError(`the certificate request is for ${JSON.stringify(String(cn?.value ?? ''))}, not for node ${JSON.stringify(nodeId)}`);
  const key = csr.publicKey as forge.pki.rsa.PublicKey | null;
  const bits = key?.n?.bitLength();
  if (!key || bits === undefined || bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) throw new NodeRequestError(`the certificate request's key must be RSA of ${MIN_RSA_BITS} to ${MAX_RSA_BITS} bits`);
  return { nodeId: checkName(nodeId, 'node id'), publicKey: key };
}

/**
 * Sign a checked node request, the CA key staying here: the node certificate and a server
 * certificate for `names`, both for the request's key (a node that joined holds no CA key to
 * make its own). Throws NodeRequestError for bad names.
 */
export function signNodeRequest(ca: Pem, req: NodeRequest, names: readonly string[], opts: LeafOptions = {}): { node: string; server: string } {
  let sans: SanName[];
  try {
    sans = parseNames(names, 'node');
  } catch (e) {
    throw new NodeRequestError((e as Error).message);
  }
  const first = sans[0] as SanName;
  const spki = der(forge.pki.publicKeyToAsn1(req.publicKey));
  return {
    node: issueFor(ca, { commonName: req.nodeId, organizationalUnit: NODE_OU, names: sans, serverAuth: true, clientAuth: true, days: 365 }, opts, spki),
    server: issueFor(ca, { commonName: first.value, names: sans, serverAuth: true, clientAuth: false, days: 825 }, opts, spki),
  };
}

/** A user's client certificate: CN = user, OU = oneport-user, EKU clientAuth only, no SANs. */
export function issueClientCert(ca: Pem, user: string, opts: LeafOptions = {}): Pem {
  const commonName = checkName(user, 'user name');
  return issue(ca, { commonName, organizationalUnit: USER_OU, names: [], serverAuth: false, clientAuth: true, days: 365 }, opts);
}

// ---------------------------------------------------------------------------------------------
// Reading names back (any PEM certificate)

/** Parsed names by PEM text: the SNI callback asks on every handshake. */
const namesCache = new Map<string, CertificateNames>();
const NAMES_CACHE_MAX = 64;

/** Names and expiry of the first certificate in `certPem`, read with Node's X509Certificate. */
export function certificateNames(certPem: string): CertificateNames {
  let names = namesCache.get(certPem);
  if (!names) {
    names = readNames(certPem);
    if (namesCache.size >= NAMES_CACHE_MAX) namesCache.delete(namesCache.keys().next().value as string);
    namesCache.set(certPem, names);
  }
  const { dns, ips, ...rest } = names;
  return { ...rest, dns: [...dns], ips: [...ips], notAfter: new Date(names.notAfter) };
}

function readNames(certPem: string): CertificateNames {
  const x = new X509Certificate(certPem);
  const dns: string[] = [];
  const ips: string[] = [];
  for (const entry of splitSubjectAltName(x.subjectAltName ?? '')) {
    if (entry.startsWith('DNS:')) dns.push(unquote(entry.slice(4)));
    else if (entry.startsWith('IP Address:')) ips.push(canonicalIp(unquote(entry.slice(11))));
  }
  // The legacy object holds raw attribute values (the `subject` string escapes some characters).
  const subject = x.toLegacyObject().subject as unknown as Record<string, string | string[] | undefined> | undefined;
  const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);
  const names: CertificateNames = { dns, ips, notAfter: new Date(x.validTo) };
  const commonName = first(subject?.CN);
  const organizationalUnit = first(subject?.OU);
  if (commonName !== undefined) names.commonName = commonName;
  if (organizationalUnit !== undefined) names.organizationalUnit = organizationalUnit;
  return names;
}

/** Node joins SAN entries with ", " and JSON-quotes values that contain separators. */
function splitSubjectAltName(san: string): string[] {
  const out: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < san.length; i++) {
    const c = san[i] as string;
    if (quoted && c === '\\') {
      current += c + (san[++i] ?? '');
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (!quoted && c === ',' && san[i + 1] === ' ') {
      out.push(current);
      current = '';
      i++;
      continue;
    }
    current += c;
  }
  if (current) out.push(current);
  return out;
}

function unquote(value: string): string {
  if (!value.startsWith('"')) return value;
  try {
    return JSON.parse(value) as string;
  } catch {
    return value;
  }
}

// ---------------------------------------------------------------------------------------------
// Matching (RFC 6125)

/**
 * Whether the certificate is valid for `serverName`: IP literals against IP SANs only; DNS
 * names against DNS SANs, exactly (case-insensitive) or by a wildcard that is the whole
 * left-most label and stands for exactly one label (`*.example.com` matches `a.example.com`,
 * not `example.com` nor `a.b.example.com`). The subject CN is looked at only when the
 * certificate has no SANs at all.
 */
export function certificateMatchesName(certPem: string, serverName: string): boolean {
  const names = namesCache.get(certPem) ?? certificateNames(certPem);
  let wanted = serverName;
  if (/^\[.*\]$/.test(wanted)) wanted = wanted.slice(1, -1);
  if (isIPv4(wanted) || isIPv6(wanted)) return names.ips.includes(canonicalIp(wanted));
  wanted = wanted.toLowerCase().replace(/\.$/, '');
  if (!wanted || wanted.includes('*')) return false;
  const patterns = names.dns.length > 0 || names.ips.length > 0 ? names.dns : names.commonName ? [names.commonName] : [];
  return patterns.some((p) => dnsMatches(p.toLowerCase().replace(/\.$/, ''), wanted));
}

function dnsMatches(pattern: string, host: string): boolean {
  if (!pattern.startsWith('*.')) return !pattern.includes('*') && pattern === host;
  const suffix = pattern.slice(1); // ".example.com"
  if (suffix.includes('*') || suffix.indexOf('.', 1) < 0) return false; // no `*.*.x`, no `*.com`
  const dot = host.indexOf('.');
  return dot > 0 && host.slice(dot) === suffix;
}
