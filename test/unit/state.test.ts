/**
 * The state folder's permissions (security issue 10, point 9): new folders are created 0700; an
 * existing folder is accepted only if it is ours and not group/world-writable, and never chmodded.
 */
import t from 'tap';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateFolderError, prepareStateFolder } from '../../gateway/state.js';

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
