import t from 'tap';
import { statSync, readFileSync } from 'node:fs';
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
  t.match(JSON.parse(readFileSync(file, 'utf8')), { format: 'oneport-directory/1', version: 3 });
  const keys = a.keys();
  t.equal(keys.previous.length, 1, 'the previous key stays valid after rotation');
  await a.close();

  const b = new MemoryDirectory(file);
  t.equal(b.version(), 3);
  t.equal(b.getVm('desk')?.endpoints[0]?.publishedPort, 5900);
  t.ok(isAssigned(b.getVm('desk')!, b.getUser('alice')!), 'assigned through a group');
  t.same(b.keys(), keys);
  t.ok(Object.isFrozen(b.getUser('alice')), 'records are immutable');
  t.equal(await b.deleteVm('nope'), false);
  await b.close();
});

t.test('rate-limited log lines: a burst is cut, then the count of what was dropped is reported', async (t) => {
  let now = 0;
  const log = new RateLimitedLog(3, 1000, () => now);
  t.same([log.take('k'), log.take('k'), log.take('k'), log.take('k'), log.take('k')], [0, 0, 0, -1, -1]);
  t.equal(log.take('other'), 0, 'keys are independent');
  now = 1000;
  t.equal(log.take('k'), 2, 'the next window reports the 2 dropped lines');
});
