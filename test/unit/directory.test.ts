import t from 'tap';
import { statSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDirectory } from '../../gateway/directory/memory.js';
import { toVmRecord, vmSchema, isAssigned } from '../../gateway/directory/directory.js';
import { RateLimitedLog } from '../../gateway/log.js';

t.test('the embedded directory persists atomically with private permissions, and reloads', async (t) => {
  const dir = t.testdir({});
  const file = join(dir, 'directory.json');
  const a = new MemoryDirectory(file);
  const changes: unknown[] = [];
  a.on('change', (c) => changes.push(c));
  await a.putUser({ name: 'alice', passwordHash: 'scrypt$x', roles: ['user'], groups: ['lab'], sessionsNotBefore: 0 });
  await a.putVm(toVmRecord(vmSchema.parse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }], groups: ['lab'] })));
  await a.rotateKeys();
  t.equal(a.version(), 3);
  t.same(changes.map((c) => (c as { kind: string }).kind), ['user', 'vm', 'keys']);
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600');
  t.equal(statSync(`${file}.log`).mode & 0o777, 0o600, 'the change log too');
  const keys = a.keys();
  t.equal(keys.previous.length, 1, 'the previous key stays valid after rotation');
  await a.close();
  t.match(JSON.parse(readFileSync(file, 'utf8')), { format: 'oneport-directory/1', version: 3 }, 'close() folds the log into the base');
  t.equal(statSync(`${file}.log`).size, 0);

  const b = new MemoryDirectory(file);
  t.equal(b.version(), 3);
  t.equal(b.getVm('desk')?.endpoints[0]?.publishedPort, 5900);
  t.ok(isAssigned(b.getVm('desk')!, b.getUser('alice')!), 'assigned through a group');
  t.same(b.keys(), keys);
  t.ok(Object.isFrozen(b.getUser('alice')), 'records are immutable');
  t.equal(await b.deleteVm('nope'), false);
  await b.close();
});

t.test('the embedded directory appends a change to its log (O(change)), survives a crash and a torn tail, and compacts', async (t) => {
  const dir = t.testdir({});
  const file = join(dir, 'directory.json');
  const vm = (name: string, port: number) => toVmRecord(vmSchema.parse({ name, node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }] }));
  const a = new MemoryDirectory(file);
  await a.flush();
  const base = readFileSync(file, 'utf8');
  await a.putVm(vm('desk1', 5901));
  await a.putVm(vm('desk2', 5902));
  await a.putVm({ ...vm('desk1', 5911), epoch: 1 });
  t.equal(await a.deleteVm('desk2'), true);
  await a.rotateKeys();
  t.equal(readFileSync(file, 'utf8'), base, 'the base is not rewritten per change');
  const log = readFileSync(`${file}.log`, 'utf8');
  t.equal(log.split('\n').length, 6, 'one line per change');
  // A crash: no close(). Then a torn append at the end.
  writeFileSync(`${file}.log`, `${log}{"v":6,"k":"vm","n":"desk3","d":{"na`);
  const b = new MemoryDirectory(file);
  t.equal(b.version(), 5, 'every acknowledged change is back; the torn one is not');
  t.equal(b.getVm('desk1')?.endpoints[0]?.port, 5911);
  t.equal(b.getVm('desk2'), undefined);
  t.same(b.keys(), a.keys());
  t.equal(readFileSync(`${file}.log`, 'utf8'), log, 'the torn tail was cut off');
  await b.putVm(vm('desk3', 5903));
  const c = new MemoryDirectory(file);
  t.equal(c.getVm('desk3')?.endpoints[0]?.port, 5903, 'appends after a cut tail read back');
  // Compaction once the log outgrows the base (and 1 MiB): the base then holds everything.
  const big = 'x'.repeat(60);
  for (let i = 0; i < 5000; i++) await b.putUser({ name: `u${i}`, passwordHash: `scrypt$${big}`, roles: ['user'], groups: [], sessionsNotBefore: 0 });
  t.ok(statSync(`${file}.log`).size < 1 << 20, 'the log was folded into the base');
  const d = new MemoryDirectory(file);
  t.equal(d.version(), b.version());
  t.equal(d.listUsers().length, 5000);
  // A crash between writing the new base and emptying the log: old lines are skipped.
  await b.flush();
  writeFileSync(`${file}.log`, log);
  t.equal(new MemoryDirectory(file).version(), b.version());
  await b.close();
  await c.close();
  await d.close();
});

t.test('rate-limited log lines: a burst is cut, then the count of what was dropped is reported', async (t) => {
  let now = 0;
  const log = new RateLimitedLog(3, 1000, () => now);
  t.same([log.take('k'), log.take('k'), log.take('k'), log.take('k'), log.take('k')], [0, 0, 0, -1, -1]);
  t.equal(log.take('other'), 0, 'keys are independent');
  now = 1000;
  t.equal(log.take('k'), 2, 'the next window reports the 2 dropped lines');
});
