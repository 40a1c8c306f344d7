/**
 * Directory commands (gateway/directory/commands.ts) against the in-memory directory: what the
 * API's admin routes and the CLI's offline path both run.
 */
import t from 'tap';
import { MemoryDirectory } from '../../gateway/directory/memory.js';
import type { PutVmOptions, VmRecord } from '../../gateway/directory/directory.js';
import { deleteUser, deleteVm, moveVm, putUser, putVm } from '../../gateway/directory/commands.js';
import { verifyPassword } from '../../gateway/auth/passwords.js';

function directory(t: { teardown(fn: () => unknown): void }): MemoryDirectory {
  const dir = new MemoryDirectory();
  t.teardown(() => dir.close());
  return dir;
}

const endpoints = [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }];

t.test('putUser: a new user needs a password; changes keep what is not given', async (t) => {
  const dir = directory(t);
  await t.rejects(putUser(dir, 'alice', {}), { code: 'ONEPORT_ERR_VALIDATION', message: 'a new user needs a password' });
  t.equal(dir.listUsers().length, 0, 'nothing written');

  const created = await putUser(dir, 'alice', { password: 'alice-password-1', groups: ['lab'] });
  t.same(created, { name: 'alice', roles: ['user'], groups: ['lab'] }, 'answered without the hash; roles default to user');
  const stored = dir.getUser('alice')!;
  t.ok(await verifyPassword('alice-password-1', stored.passwordHash), 'the password is stored hashed');
  t.ok(stored.sessionsNotBefore > 0, 'a password set now revokes older sessions');

  t.same(await putUser(dir, 'alice', { roles: ['user', 'admin'] }), { name: 'alice', roles: ['user', 'admin'], groups: ['lab'] });
  const changed = dir.getUser('alice')!;
  t.equal(changed.passwordHash, stored.passwordHash, 'no password given: the hash stays');
  t.equal(changed.sessionsNotBefore, stored.sessionsNotBefore, 'and sessions stay valid');

  await putUser(dir, 'alice', { password: 'alice-password-2' });
  t.not(dir.getUser('alice')!.passwordHash, stored.passwordHash, 'a new password replaces the hash');
  t.same(dir.getUser('alice')!.groups, ['lab']);
});

t.test('putUser: validation messages name the field', async (t) => {
  const dir = directory(t);
  const cases: Array<[string, string, unknown, RegExp]> = [
    ['bad name', 'no spaces', { password: 'long-enough-1' }, /^body: user names are 1-64/],
    ['name too long', 'a'.repeat(65), { password: 'long-enough-1' }, /^body: user names are/],
    ['short password', 'bob', { password: 'short' }, /^password: /],
    ['unknown role', 'bob', { password: 'long-enough-1', roles: ['root'] }, /^roles\.0: /],
    ['empty group', 'bob', { password: 'long-enough-1', groups: [''] }, /^groups\.0: /],
    ['unknown field', 'bob', { password: 'long-enough-1', admin: true }, /^body: .*admin/],
    ['not an object', 'bob', 'password', /^body: /],
  ];
  for (const [what, name, input, message] of cases) {
    await t.rejects(putUser(dir, name, input), { code: 'ONEPORT_ERR_VALIDATION', message }, what);
  }
  t.equal(dir.listUsers().length, 0, 'nothing written');
});

t.test('deleteUser', async (t) => {
  const dir = directory(t);
  await putUser(dir, 'alice', { password: 'alice-password-1' });
  await deleteUser(dir, 'alice');
  t.equal(dir.getUser('alice'), undefined);
  await t.rejects(deleteUser(dir, 'alice'), { code: 'ONEPORT_ERR_NOT_FOUND', message: 'no such user' });
});

t.test('putVm: validated, published ports defaulted, written', async (t) => {
  const dir = directory(t);
  const changes: unknown[] = [];
  dir.on('change', (c) => changes.push(c));
  const vm = await putVm(dir, { name: 'desk', node: 'n1', endpoints: [{ protocol: 'spice', host: '127.0.0.1', port: 5930 }], users: ['alice'] });
  t.match(vm, { name: 'desk', node: 'n1', state: 'running', epoch: 0, users: ['alice'], groups: [] });
  t.equal(vm.endpoints[0]?.publishedPort, 5900, 'the well-known port when none is given');
  t.same(dir.getVm('desk'), vm, 'the stored record is the answer');
  t.match(changes, [{ kind: 'vm', name: 'desk' }]);

  const bad: Array<[string, unknown, RegExp]> = [
    ['address as a name', { name: '127.0.0.1', node: 'n1', endpoints }, /^name: VM names are lowercase DNS names/],
    ['no endpoints', { name: 'desk', node: 'n1', endpoints: [] }, /^endpoints: /],
    ['port out of range', { name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: 'h', port: 70000 }] }, /^endpoints\.0\.port: /],
    ['two of one protocol', { name: 'desk', node: 'n1', endpoints: [...endpoints, ...endpoints] }, /^body: at most one endpoint per protocol$/],
    ['unknown field', { name: 'desk', node: 'n1', endpoints, owner: 'x' }, /^body: .*owner/],
  ];
  for (const [what, input, message] of bad) await t.rejects(putVm(dir, input), { code: 'ONEPORT_ERR_VALIDATION', message }, what);
  t.equal(changes.length, 1, 'nothing written for the bad ones');
});

t.test('deleteVm', async (t) => {
  const dir = directory(t);
  await putVm(dir, { name: 'desk', node: 'n1', endpoints });
  await deleteVm(dir, 'desk');
  t.equal(dir.getVm('desk'), undefined);
  await t.rejects(deleteVm(dir, 'desk'), { code: 'ONEPORT_ERR_UNKNOWN_VM' });
});

t.test('moveVm: new owner, epoch + 1, the replica swaps places when the VM moves onto it', async (t) => {
  const dir = directory(t);
  await putVm(dir, { name: 'desk', node: 'n1', replica: 'n2', endpoints });
  const moved = await moveVm(dir, 'desk', 'n3');
  t.match(moved, { node: 'n3', replica: 'n2', epoch: 1 });
  t.same(dir.getVm('desk'), moved);
  t.match(await moveVm(dir, 'desk', 'n2'), { node: 'n2', replica: 'n3', epoch: 2 }, 'onto the replica: the old owner becomes it');

  await t.rejects(moveVm(dir, 'nosuch', 'n1'), { code: 'ONEPORT_ERR_UNKNOWN_VM' });
  await t.rejects(moveVm(dir, 'desk', ''), { code: 'ONEPORT_ERR_VALIDATION', message: /^node: / });
  await t.rejects(moveVm(dir, 'desk', 'n'.repeat(64)), { code: 'ONEPORT_ERR_VALIDATION', message: /^node: / });
  const states = new Map([['n1', 'up'], ['n2', 'up'], ['n4', 'suspect']]);
  const nodeState = (n: string): string | undefined => states.get(n);
  await t.rejects(moveVm(dir, 'desk', 'n9', { nodeState }), {
    code: 'ONEPORT_ERR_VALIDATION',
    message: 'node n9 is not a member of the cluster',
  });
  // Heartbeats expire during a Redis outage: a known member that is not up yet is a 503 to retry.
  const notUp = await moveVm(dir, 'desk', 'n4', { nodeState }).catch((e: unknown) => e);
  t.match(notUp, { code: 'ONEPORT_ERR_NODE_NOT_UP', status: 503, retryAfter: 2, message: 'node n4 is suspect, not up: try again once its heartbeat is back' });
  t.match(await moveVm(dir, 'desk', 'n1', { nodeState }), { node: 'n1', epoch: 3 });
});

t.test('moveVm: a change between read and write is a conflict, not a lost update', async (t) => {
  class Racing extends MemoryDirectory {
    override async putVm(vm: VmRecord, opts: PutVmOptions = {}): Promise<boolean> {
      // Someone else bumps the epoch just before the compare-and-set lands.
      if (opts.ifEpoch !== undefined) await super.putVm({ ...this.getVm(vm.name)!, epoch: opts.ifEpoch + 10 });
      return super.putVm(vm, opts);
    }
  }
  const dir = new Racing();
  t.teardown(() => dir.close());
  await putVm(dir, { name: 'desk', node: 'n1', endpoints });
  await t.rejects(moveVm(dir, 'desk', 'n2'), { code: 'ONEPORT_ERR_CONFLICT' });
  t.match(dir.getVm('desk'), { node: 'n1', epoch: 10 }, 'the other change stands');
});
