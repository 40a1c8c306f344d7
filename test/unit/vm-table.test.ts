/**
 * The VM indexes (gateway/directory/vm-table.ts) and the mirror that keeps them: per node, per
 * unsettled state, per user and group, kept right through puts, moves, deletes and a resync.
 */
import t from 'tap';
import { VmTable } from '../../gateway/directory/vm-table.js';
import { DirectoryMirror } from '../../gateway/directory/mirror.js';
import { MemoryDirectory } from '../../gateway/directory/memory.js';
import { isAssigned, vmsForUser, type UserRecord, type VmRecord } from '../../gateway/directory/directory.js';

function vm(name: string, node: string, extra: Partial<VmRecord> = {}): VmRecord {
  return { name, node, state: 'running', epoch: 0, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5900, publishedPort: 5900 }], users: [], groups: [], ...extra };
}
function user(name: string, groups: string[] = []): UserRecord {
  return { name, passwordHash: 'x', roles: ['user'], groups, sessionsNotBefore: 0 };
}
const names = (vms: readonly VmRecord[]): string[] => vms.map((v) => v.name).sort();

t.test('indexes follow every set and delete', async (t) => {
  const table = new VmTable<VmRecord>((v) => v);
  table.set('a', vm('a', 'n1', { users: ['alice'] }));
  table.set('b', vm('b', 'n1', { groups: ['lab'], state: 'recovering' }));
  table.set('c', vm('c', 'n2', { users: ['alice', 'bob'], state: 'down' }));
  t.same(names(table.onNode('n1')), ['a', 'b']);
  t.same(names(table.unsettledOn('n1')), ['b']);
  t.same(names(table.unsettledOn('n2')), ['c']);
  t.same(names(table.forUser(user('alice'))), ['a', 'c']);
  t.same(names(table.forUser(user('carol', ['lab']))), ['b']);
  t.same(names(table.forUser(user('alice', ['lab']))), ['a', 'b', 'c'], 'by name and by group, once each');
  // A move, a state change, an unassignment.
  table.set('b', vm('b', 'n2', { groups: [], state: 'running' }));
  table.set('a', vm('a', 'n1', { users: [] }));
  t.same(names(table.onNode('n1')), ['a']);
  t.same(names(table.onNode('n2')), ['b', 'c']);
  t.same(table.unsettledOn('n1'), []);
  t.same(names(table.forUser(user('carol', ['lab']))), []);
  t.same(names(table.forUser(user('alice'))), ['c']);
  t.equal(table.delete('c'), true);
  t.equal(table.delete('c'), false);
  t.same(table.unsettledOn('n2'), []);
  t.same(table.forUser(user('bob')), []);
  t.equal(table.size, 2);
});

t.test('the mirror answers the indexed calls like a scan of listVms, through the feed and a resync', async (t) => {
  const m = new DirectoryMirror();
  const alice = user('alice', ['lab']);
  const scan = (node: string) => ({
    onNode: names(m.listVms().filter((v) => v.node === node)),
    unsettled: names(m.listVms().filter((v) => v.node === node && (v.state === 'recovering' || v.state === 'down'))),
    alice: names(m.listVms().filter((v) => isAssigned(v, alice))),
  });
  const indexed = (node: string) => ({ onNode: names(m.vmsOnNode(node)), unsettled: names(m.unsettledVms(node)), alice: names(m.vmsForUser(alice)) });
  let version = 0;
  const put = (v: VmRecord | string): void => {
    version++;
    const r = m.apply(typeof v === 'string' ? { id: `1-${version}`, version, kind: 'vm', name: v, data: undefined } : { id: `1-${version}`, version, kind: 'vm', name: v.name, data: JSON.stringify(v) });
    t.ok('applied' in r);
  };
  for (let i = 0; i < 40; i++) put(vm(`d${i}`, `n${i % 3}`, { users: i % 4 === 0 ? ['alice'] : [], groups: i % 5 === 0 ? ['lab'] : [], state: i % 7 === 0 ? 'down' : 'running' }));
  put(vm('d3', 'n2', { state: 'recovering', users: ['alice'] }));
  put('d4');
  for (const n of ['n0', 'n1', 'n2']) t.same(indexed(n), scan(n), `feed: ${n}`);
  const vms = new Map(m.listVms().filter((v) => v.name !== 'd5').map((v) => [v.name, JSON.stringify(v.name === 'd6' ? { ...v, node: 'n0', state: 'down' } : v)] as [string, string]));
  m.replace({ users: new Map(), vms, keys: undefined, version: version + 5, lastId: '2-0' });
  for (const n of ['n0', 'n1', 'n2']) t.same(indexed(n), scan(n), `resync: ${n}`);
});

t.test('the embedded directory lists a user\'s desktops from the index, sorted by name', async (t) => {
  const dir = new MemoryDirectory();
  await dir.putVm(vm('zeta', 'n1', { users: ['alice'] }));
  await dir.putVm(vm('alpha', 'n1', { groups: ['lab'] }));
  await dir.putVm(vm('other', 'n1', { users: ['bob'] }));
  t.same(vmsForUser(dir, user('alice', ['lab'])).map((v) => v.name), ['alpha', 'zeta']);
  t.same(dir.unsettledVms('n1'), []);
});

t.test('an index key holding one name, a few, many, and back', async (t) => {
  const table = new VmTable<VmRecord>((v) => v);
  const all = Array.from({ length: 40 }, (_, i) => `v${String(i).padStart(2, '0')}`);
  for (const [i, n] of all.entries()) {
    table.set(n, vm(n, 'n1', { users: ['alice'], groups: ['lab'] }));
    table.set(n, vm(n, 'n1', { users: ['alice', 'alice'], groups: ['lab'] }), undefined);
    t.same(names(table.forUser(user('alice'))), all.slice(0, i + 1), `${i + 1} VMs, each once`);
  }
  t.same(names(table.onNode('n1')), all);
  for (const [i, n] of all.entries()) {
    table.delete(n);
    t.same(names(table.forUser(user('alice', ['lab']))), all.slice(i + 1), `${all.length - i - 1} left`);
    t.same(names(table.onNode('n1')), all.slice(i + 1));
  }
  table.set('x', vm('x', 'n2', { users: ['bob'] }));
  t.same(names(table.forUser(user('alice', ['lab']))), [], 'emptied keys hold nothing');
  t.same(names(table.forUser(user('bob'))), ['x']);
});

t.test('a node\'s names appended by a load, then turned into an index at its first removal', async (t) => {
  const table = new VmTable<VmRecord>((v) => v);
  const held = new Map<string, VmRecord>();
  const put = (v: VmRecord): void => {
    table.set(v.name, v);
    held.set(v.name, v);
  };
  // n1: 40 VMs (a Set when turned), n2: 5 (an array), n3: 1 (a name), n4: none yet.
  for (let i = 0; i < 40; i++) put(vm(`a${i}`, 'n1'));
  for (let i = 0; i < 5; i++) put(vm(`b${i}`, 'n2'));
  put(vm('c0', 'n3'));
  const scan = (node: string): string[] => [...held.values()].filter((v) => v.node === node).map((v) => v.name).sort();
  const same = (what: string): void => {
    for (const node of ['n1', 'n2', 'n3', 'n4']) t.same(names(table.onNode(node)), scan(node), `${what}: ${node}`);
  };
  same('loaded');
  put(vm('a5', 'n2')); // leaves n1 (turned into a Set), joins n2 (still appended)
  same('one moved');
  put(vm('b1', 'n4', { state: 'down' })); // leaves n2 (an array now), a new node
  put(vm('c0', 'n3', { epoch: 1 })); // set again on its node: n3 turned into one name, then back
  same('more moves');
  t.same(names(table.unsettledOn('n4')), ['b1']);
  for (const name of ['a6', 'b2', 'c0']) {
    table.delete(name);
    held.delete(name);
  }
  same('deleted');
  for (let i = 0; i < 20; i++) put(vm(`d${i}`, 'n3'));
  same('added after a removal');
  for (const name of [...held.keys()]) {
    table.delete(name);
    held.delete(name);
  }
  same('emptied');
});

t.test('a table kept without the per-user index (a primary\'s mirror) answers by node and refuses by user', async (t) => {
  const table = new VmTable<VmRecord>((v) => v, { users: false });
  table.set('a', vm('a', 'n1', { users: ['alice'], state: 'down' }));
  table.set('b', vm('b', 'n2', { groups: ['lab'] }));
  table.set('a', vm('a', 'n2', { users: ['bob'] }));
  t.same(names(table.onNode('n2')), ['a', 'b']);
  t.same(table.unsettledOn('n1'), []);
  t.throws(() => table.forUser(user('bob')), /no per-user index/);
  t.equal(table.delete('a'), true);
  const m = new DirectoryMirror(undefined, { users: false });
  m.replace({ users: new Map(), vms: new Map([['c', JSON.stringify(vm('c', 'n3', { users: ['carol'] }))]]), keys: undefined, version: 1, lastId: '1-0' });
  t.same(names(m.vmsOnNode('n3')), ['c']);
  t.throws(() => m.vmsForUser(user('carol')), /no per-user index/);
});
