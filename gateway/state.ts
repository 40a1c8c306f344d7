/**
 * The state folder (`~/.oneport` by default): the embedded directory, the cluster CA and the
 * server certificate. Created on first use with private permissions; certificates that no longer
 * cover the configured names or expire within 30 days are reissued from the CA.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Pem, certificateNames, createCa, issueServerCert } from '../certs/ca.js';

export interface StatePaths {
  readonly root: string;
  readonly directory: string;
  readonly caCert: string;
  readonly caKey: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly controlSocket: string;
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
  mkdirSync(root, { recursive: true, mode: 0o700 });
  chmodSync(root, 0o700);
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

function writePrivate(file: string, text: string): void {
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
}
