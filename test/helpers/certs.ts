/**
 * Certificates for tests, made at run time (nothing private is ever committed): one CA per
 * process and one server certificate per set of names, all valid for one day.
 */
import { type Pem, createCa, issueServerCert } from '../../certs/ca.js';

export interface TestPki {
  ca: Pem;
  server: Pem;
}

export const TEST_SERVER_NAMES: readonly string[] = ['localhost', '127.0.0.1', '::1'];

let ca: Pem | undefined;
const servers = new Map<string, Pem>();

/** The process-wide test CA and a server certificate it issued for `names`. */
export function testPki(names: string[] = [...TEST_SERVER_NAMES]): TestPki {
  ca ??= createCa({ commonName: 'oneport test CA', days: 1 });
  const key = JSON.stringify(names);
  let server = servers.get(key);
  if (!server) {
    server = issueServerCert(ca, names, { days: 1 });
    servers.set(key, server);
  }
  return { ca: { ...ca }, server: { ...server } };
}
