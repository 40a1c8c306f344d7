/**
 * The state folder's permissions (security issue 10, point 9): new folders are created 0700; an
 * existing folder is accepted only if it is ours and not group/world-writable, and never chmodded.
 */
import t from 'tap';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { StateFolderError, ensureNodeCert, ensureState, prepareStateFolder, saveJoinedIdentity, statePaths } from '../../gateway/state.js';
import { createCa, createNodeRequest, readNodeRequest, signNodeRequest } from '../../certs/ca.js';

const mode = (p: string): number => statSync(p).mode & 0o7777;

function base(t: { teardown(f: () => unknown): void }): string {
  const b = mkdtempSync(join(tmpdir(), 'oneport-state-unit-'));
  t.teardown(() => rmSync(b, { recursive: true, force: true }));
  return b;
}

t.test('a new folder, and its missing parents, are created 0700', async (t) => {
  const b = base(t);
  const root = join(b, 'a', 'b', 'state');
  prepareStateFolder(root);
  t.equal(mode(root), 0o700);
  t.equal(mode(join(b, 'a')), 0o700);
});

t.test('an existing folder of ours, not writable by others, is used as it is', async (t) => {
  const b = base(t);
  for (const m of [0o700, 0o750, 0o755]) {
    const root = join(b, `ok-${m.toString(8)}`);
    mkdirSync(root);
    chmodSync(root, m);
    prepareStateFolder(root);
    t.equal(mode(root), m, `mode ${m.toString(8)} is kept, not chmodded to 700`);
  }
});

t.test('a group- or world-writable folder is refused, and left as it was', async (t) => {
  const b = base(t);
  for (const m of [0o1777, 0o777, 0o770, 0o702]) {
    const root = join(b, `bad-${m.toString(8)}`);
    mkdirSync(root);
    chmodSync(root, m);
    t.throws(() => prepareStateFolder(root), StateFolderError, `mode ${m.toString(8)} refused`);
    t.throws(() => prepareStateFolder(root), { message: new RegExp(`${root}.*(group|world)-writable`) }, 'the message names the folder and the problem');
    t.equal(mode(root), m, 'mode unchanged');
  }
});

t.test('a folder owned by someone else is refused', { skip: process.getuid?.() !== 0 && 'needs root to make a folder owned by another user' }, async (t) => {
  const b = base(t);
  const root = join(b, 'theirs');
  mkdirSync(root, { mode: 0o700 });
  chownSync(root, 65534, 65534);
  t.throws(() => prepareStateFolder(root), { message: /belongs to uid 65534/ });
  t.equal(mode(root), 0o700);
  t.equal(statSync(root).uid, 65534, 'owner unchanged');
});

t.test('a file where the folder should be is refused', async (t) => {
  const b = base(t);
  const file = join(b, 'file');
  writeFileSync(file, '');
  t.throws(() => prepareStateFolder(file));
});

t.test('a node that joined (the CA certificate without its key) keeps its certificates and never makes a CA', async (t) => {
  const root = join(base(t), 'joined');
  prepareStateFolder(root);
  const paths = statePaths(root);
  const ca = createCa();
  writeFileSync(paths.caCert, ca.cert);
  t.throws(() => ensureState(root, ['localhost']), StateFolderError, 'without a server certificate and a CA key, nothing to start with');
  const { csr, key } = createNodeRequest('j1');
  const signed = signNodeRequest(ca, readNodeRequest(csr, 'j1'), ['localhost']);
  saveJoinedIdentity(paths, { ca: ca.cert, key, node: signed.node, server: signed.server, seal: randomBytes(32).toString('base64') });
  t.equal(mode(paths.nodeKey), 0o600, 'the key is private');
  t.equal(mode(paths.sealKey), 0o600, 'and so is the seal key');
  const state = ensureState(root, ['localhost']);
  t.equal(state.ca.key, undefined, 'no CA key');
  t.equal(state.ca.cert, ca.cert, 'the cluster CA is kept, not replaced by a new one');
  t.equal(state.server.cert, signed.server);
  t.same(state.created, []);
  t.same(ensureNodeCert(state, 'j1', ['localhost']), { cert: signed.node, key }, 'the node certificate it was given');
  t.throws(() => ensureNodeCert(state, 'j2', ['localhost']), /join token/, 'another node id needs a new token');
  const renamed = ensureState(root, ['localhost', 'gw.example']);
  t.match(renamed.warnings.join(), /no CA key to reissue/, 'names it cannot cover are warned about');
});
