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
  };
}

const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;

export interface EnsuredState {
  readonly paths: StatePaths;
  readonly ca: Pem;
  readonly server: Pem;
  /** What was created or renewed, for the start-up log. */
  readonly created: string[];
}

export function ensureState(root: string, serverNames: readonly string[]): EnsuredState {
  const paths = statePaths(root);
  const created: string[] = [];
  prepareStateFolder(root);
  let ca: Pem;
  if (existsSync(paths.caCert) && existsSync(paths.caKey)) {
    ca = { cert: readFileSync(paths.caCert, 'utf8'), key: readFileSync(paths.caKey, 'utf8') };
  } else {
    ca = createCa();
    writePrivate(paths.caKey, ca.key);
    writeFileSync(paths.caCert, ca.cert, { mode: 0o644 });
    created.push('cluster CA');
  }
  let server: Pem | undefined;
  if (existsSync(paths.serverCert) && existsSync(paths.serverKey)) {
    server = { cert: readFileSync(paths.serverCert, 'utf8'), key: readFileSync(paths.serverKey, 'utf8') };
    const names = certificateNames(server.cert);
    const covered = new Set([...names.dns.map((n) => n.toLowerCase()), ...names.ips]);
    const stale = names.notAfter.getTime() - Date.now() < RENEW_BEFORE_MS;
    if (stale || !serverNames.every((n) => covered.has(n.toLowerCase()))) server = undefined;
  }
  if (!server) {
    server = issueServerCert(ca, serverNames);
    writePrivate(paths.serverKey, server.key);
    writeFileSync(paths.serverCert, server.cert, { mode: 0o644 });
    created.push(`server certificate for ${serverNames.join(', ')}`);
  }
  return { paths, ca, server, created };
}

/**
 * The node certificate for node-to-node mutual TLS (cluster), from the cluster CA in the state
 * folder: every node of a cluster must hold the same CA (copy ca.pem and ca-key.pem before the
 * first start). Reissued when the node id or the CA changed, or it expires within 30 days.
 */
export function ensureNodeCert(state: EnsuredState, nodeId: string, names: readonly string[]): Pem {
  const { paths, ca } = state;
  if (existsSync(paths.nodeCert) && existsSync(paths.nodeKey)) {
    const cert = readFileSync(paths.nodeCert, 'utf8');
    const key = readFileSync(paths.nodeKey, 'utf8');
    try {
      const x = new X509Certificate(cert);
      const fresh = new Date(x.validTo).getTime() - Date.now() > RENEW_BEFORE_MS;
      if (fresh && x.checkIssued(new X509Certificate(ca.cert)) && x.subject.split('\n').includes(`CN=${nodeId}`)) return { cert, key };
    } catch {
      // unreadable: reissue
    }
  }
  const pem = issueNodeCert(ca, nodeId, names);
  writePrivate(paths.nodeKey, pem.key);
  writeFileSync(paths.nodeCert, pem.cert, { mode: 0o644 });
  return pem;
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
