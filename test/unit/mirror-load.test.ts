/**
 * The mirror's paged load (gateway/directory/mirror.ts beginLoad/loadPage/endLoad): pages applied
 * in place, the feed after the head replayed at the end, what the load did not find removed, and
 * only the records that changed announced, including those of a load given up halfway.
 */
import t from 'tap';
import { DirectoryMirror, type ChangeEntry } from '../../gateway/directory/mirror.js';
import type { DirectoryChange, VmRecord } from '../../gateway/directory/directory.js';

function vm(name: string, node = 'n1', epoch = 0): VmRecord {
  return { name, node, state: 'running', epoch, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5900, publishedPort: 5900 }], users: ['alice'], groups: [] };
}
const page = (...vms: VmRecord[]): string[] => vms.flatMap((v) => [v.name, JSON.stringify(v)]);
const ring = JSON.stringify({ current: { id: 1, secret: 'c2VjcmV0', createdAt: 0 }, previous: [] });
const names = (changes: readonly DirectoryChange[]): string[] => changes.map((c) => ('name' in c ? `${c.kind}:${c.name}` : c.kind)).sort();
const entry = (version: number, e: Omit<ChangeEntry, 'id' | 'version'>): ChangeEntry => ({ id: `9-${version}`, version, ...e });

t.test('a first load: pages, then the feed after the head; counted, not announced', async (t) => {
  const m = new DirectoryMirror();
  m.beginLoad();
  t.same(m.loadPage('vm', page(vm('a'), vm('b'))), []);
  t.same(m.loadPage('user', ['alice', JSON.stringify({ name: 'alice', passwordHash: 'x', roles: ['user'], groups: [], sessionsNotBefore: 0 })]), []);
  t.same(m.loadPage('vm', [...page(vm('c')), 'bad', '{"name":"other"}']), ['vm "bad"'], 'a record whose name is not its key is skipped');
  t.equal(m.version, 0, 'the version moves only at the end');
  t.equal(m.getVm('a')?.node, 'n1', 'pages are readable as they land');
  t.throws(() => m.apply(entry(1, { kind: 'vm', name: 'x', data: JSON.stringify(vm('x')) })), 'no feed entry while a load runs');
  const r = m.endLoad({ keys: ring, version: 10, lastId: '9-10' }, [
    entry(11, { kind: 'vm', name: 'b', data: undefined }),
    entry(12, { kind: 'vms', name: '', data: undefined, records: [['c', JSON.stringify(vm('c', 'n2', 1))], ['d', JSON.stringify(vm('d', 'n2'))]] }),
  ]);
  t.same(r.changes, [{ kind: 'keys', version: 12 }], 'records are not listed in a first load (nobody listens yet)');
  t.equal(r.changed, 3 + 1 + 1, 'but counted: a, c, d, alice and the key ring (not b, added then deleted)');
  t.equal(m.version, 12);
  t.equal(m.lastId, '9-12');
  t.same(m.listVms().map((v) => v.name).sort(), ['a', 'c', 'd']);
  t.same(m.vmsOnNode('n2').map((v) => v.name).sort(), ['c', 'd'], 'indexes follow the replay');
  t.ok(Object.isFrozen(m.getVm('a')), 'a record read is frozen');
  t.not(m.getVm('a'), m.getVm('a'), 'and parsed for each read (the mirror keeps the JSON)');
});

t.test('a resync in place announces only what differs; a load given up keeps its changes for the next', async (t) => {
  const m = new DirectoryMirror();
  m.replace({ users: new Map(), vms: new Map(['a', 'b', 'c', 'd'].map((n) => [n, JSON.stringify(vm(n))])), keys: ring, version: 5, lastId: '9-5' });
  // A load that moves 'a' and then is given up (the feed was trimmed under it, say).
  m.beginLoad();
  m.loadPage('vm', page(vm('a', 'n3', 1)));
  m.abortLoad();
  t.equal(m.getVm('a')?.node, 'n3', 'what a given-up load applied stays');
  t.equal(m.version, 5);
  // The next load: 'a' as the first one saw it, 'b' unchanged, 'c' changed, 'd' gone, 'e' new, 'f' malformed.
  m.beginLoad();
  m.loadPage('vm', [...page(vm('a', 'n3', 1), vm('b'), vm('c', 'n2', 1)), 'f', '{']);
  m.loadPage('vm', page(vm('e')));
  const r = m.endLoad({ keys: ring, version: 7, lastId: '9-7' }, []);
  t.same(names(r.changes), ['vm:a', 'vm:c', 'vm:d', 'vm:e'], 'a (from the given-up load), c, d and e; not b, not the unchanged key ring');
  t.equal(r.changed, 4);
  t.same(r.changes.map((c) => c.version), [7, 7, 7, 7]);
  t.same(m.listVms().map((v) => v.name).sort(), ['a', 'b', 'c', 'e']);
  t.same(m.vmsOnNode('n1').map((v) => v.name).sort(), ['b', 'e']);
  // And the feed goes on from there.
  const applied = m.apply(entry(8, { kind: 'vm', name: 'b', data: JSON.stringify(vm('b', 'n2', 1)) }));
  t.ok('applied' in applied);
  t.same(m.vmsOnNode('n2').map((v) => v.name).sort(), ['b', 'c']);
});
