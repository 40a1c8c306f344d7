/**
 * The state folder (`~/.oneport` by default): the embedded directory, the cluster CA and the
 * server certificate. Created on first use with private permissions (0700); an existing folder
 * is used only if it is ours and nobody else can write to it, and its mode is never changed
 * (`--state /tmp` must not lock everyone else out of /tmp). Certificates that no longer cover the
 * configured names or expire within 30 days are reissued from the CA.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { type Pem, certificateNames, createCa, issueNodeCert, issueServerCert } from '../certs/ca.js';

export interface StatePaths {
  readonly root: string;
  readonly directory: string;
  readonly caCert: string;
  readonly caKey: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly controlSocket: string;
  readonly nodeCert: string;
  readonly nodeKey: string;
  /** The highest leader epoch this node has seen (cluster). */
  readonly epoch: string;
  /** Logged-out API sessions, until they expire (embedded auth store). */
  readonly revokedSessions: string;
  /** The key ring's seal key, on a node that joined with a token (cluster/seal.ts). */
  readonly sealKey: string;
}

export function statePaths(root: string): StatePaths {
  return {
    root,
    directory: join(root, 'directory.json'),
    caCert: join(root, 'ca.pem'),
    caKey: join(root, 'ca-key.pem'),
    serverCert: join(root, 'server.pem'),
    serverKey: join(root, 'server-key.pem'),
    controlSocket: join(root, 'control.sock'),
    nodeCert: join(root, 'node.pem'),
    nodeKey: join(root, 'node-key.pem'),
    epoch: join(root, 'epoch'),
    revokedSessions: join(root, 'revoked-sessions.json'),
    sealKey: join(root, 'seal.key'),
  };
}

const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;

/** The cluster CA: its certificate, and its key only on nodes that sign (a joined node has none). */
export interface CaPem {
  readonly cert: string;
  readonly key: string | undefined;
}

export interface EnsuredState {
  readonly paths: StatePaths;
  readonly ca: CaPem;
  readonly server: Pem;
  /** What was created or renewed, for the start-up log. */
  readonly created: string[];
  /** What should have been renewed but could not be (no CA key here), for the start-up log. */
  readonly warnings: string[];
}

export function ensureState(root: string, serverNames: readonly string[]): EnsuredState {
  const paths = statePaths(root);
  const created: string[] = [];
  const warnings: string[] = [];
  prepareStateFolder(root);
  let ca: CaPem;
  if (existsSync(paths.caCert) && existsSync(paths.caKey)) {
    ca = { cert: readFileSync(paths.caCert, 'utf8'), key: readFileSync(paths.caKey, 'utf8') };
  } else if (existsSync(paths.caCert)) {
    // A node that joined with a token: the CA's certificate without its key.
    ca = { cert: readFileSync(paths.caCert, 'utf8'), key: undefined };
  } else {
    const made = createCa();
    writePrivate(paths.caKey, made.key);
    writeFileSync(paths.caCert, made.cert, { mode: 0o644 });
    ca = made;
    created.push('cluster CA');
  }
  let server: Pem | undefined;
  if (existsSync(paths.serverCert) && existsSync(paths.serverKey)) {
    server = { cert: readFileSync(paths.serverCert, 'utf8'), key: readFileSync(paths.serverKey, 'utf8') };
    const names = certificateNames(server.cert);
    const covered = new Set([...names.dns.map((n) => n.toLowerCase()), ...names.ips]);
    const stale = names.notAfter.getTime() - Date.now() < RENEW_BEFORE_MS;
    if (stale || !serverNames.every((n) => covered.has(n.toLowerCase()))) {
      if (ca.key === undefined) warnings.push(`the server certificate ${stale ? 'expires within 30 days' : `does not cover ${serverNames.join(', ')}`} and this node holds no CA key to reissue it: join again with a new token, or configure tls.certificates`);
      else server = undefined;
    }
  }
  if (!server) {
    if (ca.key === undefined) throw new StateFolderError(`${paths.serverCert} is missing and this node holds no CA key (${paths.caKey}) to make one: start it with a join token (README "Cluster setup")`);
    server = issueServerCert({ cert: ca.cert, key: ca.key }, serverNames);
    writePrivate(paths.serverKey, server.key);
    writeFileSync(paths.serverCert, server.cert, { mode: 0o644 });
    created.push(`server certificate for ${serverNames.join(', ')}`);
  }
  return { paths, ca, server, created, warnings };
}

/**
 * The node certificate for node-to-node mutual TLS (cluster), from the cluster CA in the state
 * folder: a node holding the CA key issues its own, reissued when the node id or the CA changed,
 * or it expires within 30 days; a node that joined with a token uses the one it was given (until
 * it expires: then it needs a new token).
 */
export function ensureNodeCert(state: EnsuredState, nodeId: string, names: readonly string[]): Pem {
  const { paths, ca } = state;
  const held = heldNodeCert(paths, ca.cert, nodeId);
  if (held && (held.fresh || ca.key === undefined)) return held.pem;
  if (ca.key === undefined) {
    throw new StateFolderError(`no valid node certificate for node ${nodeId} in ${paths.root}, and no CA key to issue one: start this node with a new join token (README "Cluster setup")`);
  }
  const pem = issueNodeCert({ cert: ca.cert, key: ca.key }, nodeId, names);
  writePrivate(paths.nodeKey, pem.key);
  writeFileSync(paths.nodeCert, pem.cert, { mode: 0o644 });
  return pem;
}

/**
 * The node certificate in the state folder when it is node `nodeId`'s, issued by the CA and
 * still valid; `fresh` unless it expires within 30 days.
 */
export function heldNodeCert(paths: StatePaths, caCert: string, nodeId: string): { pem: Pem; fresh: boolean } | undefined {
  if (!existsSync(paths.nodeCert) || !existsSync(paths.nodeKey)) return undefined;
  const cert = readFileSync(paths.nodeCert, 'utf8');
  const key = readFileSync(paths.nodeKey, 'utf8');
  try {
    const x = new X509Certificate(cert);
    const left = new Date(x.validTo).getTime() - Date.now();
    if (left <= 0 || !x.checkIssued(new X509Certificate(caCert)) || !x.subject.split('\n').includes(`CN=${nodeId}`)) return undefined;
    return { pem: { cert, key }, fresh: left > RENEW_BEFORE_MS };
  } catch {
    return undefined;
  }
}

/** The state folder is unfit: not ours, or writable by others. The message says how to fix it. */
export class StateFolderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StateFolderError';
  }
}

/**
 * Create `root` (and missing parents) with mode 0700, or accept an existing folder only if the
 * current user owns it and neither group nor others may write to it: anyone who can write there
 * could swap the CA key, the directory or the control socket. An existing folder is never
 * chmodded; refusing is the caller's cue to pick a folder of its own.
 */
export function prepareStateFolder(root: string): void {
  // mkdir's mode is filtered by the umask, which can only take bits away from 0700.
  if (mkdirSync(root, { recursive: true, mode: 0o700 }) !== undefined) return;
  const st = statSync(root);
  if (!st.isDirectory()) throw new StateFolderError(`state folder ${root} is not a folder`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new StateFolderError(`state folder ${root} belongs to uid ${st.uid}, not to this user (uid ${uid}); use a folder of your own (--state)`);
  }
  if ((st.mode & 0o022) !== 0) {
    const who = st.mode & 0o002 ? 'world' : 'group';
    throw new StateFolderError(
      `state folder ${root} is ${who}-writable (mode ${(st.mode & 0o7777).toString(8)}); use a folder of your own (--state), or run chmod go-w on it`,
    );
  }
}

function writePrivate(file: string, text: string): void {
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
}

/**
 * What joining with a token brought (cluster/join.ts): the cluster CA's certificate (no key), this
 * node's key, its node and server certificates for that key, and the key ring's seal key
 * (base64). Keys 0600, certificates 0644.
 */
export function saveJoinedIdentity(paths: StatePaths, joined: { ca: string; key: string; node: string; server: string; seal: string }): void {
  writePrivate(paths.sealKey, `${joined.seal}\n`);
  writePrivate(paths.nodeKey, joined.key);
  writeFileSync(paths.nodeCert, joined.node, { mode: 0o644 });
  writePrivate(paths.serverKey, joined.key);
  writeFileSync(paths.serverCert, joined.server, { mode: 0o644 });
  writeFileSync(paths.caCert, joined.ca, { mode: 0o644 });
}
