/**
 * The embedded directory (directory/memory.ts) when its state file cannot be written (disk full,
 * found by bench/faults.ts with the state folder in a full tmpfs: 20 of 20 writes answered
 * 500 ONEPORT_ERR_INTERNAL, and all 20 were served by the node anyway). A write the caller is told
 * failed must not be visible: the change was applied in memory first and stayed there, and the
 * next successful save wrote it to disk too, so a write refused with an error took effect later.
 * Here the write fails because the change log's path is taken by a folder (EISDIR), the same
 * code path as ENOSPC.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryDirectory } from '../../gateway/directory/memory.js';
import { toVmRecord, vmSchema } from '../../gateway/directory/directory.js';

t.test('a VM write that could not be saved is not served', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-dirfail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'directory.json');
  const d = new MemoryDirectory(file);
  t.teardown(() => d.close());
  await d.flush();
  mkdirSync(`${file}.log`);
  const vm = toVmRecord(vmSchema.parse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }] }));
  const version = d.version();
  const seen: string[] = [];
  d.on('change', (c: { name?: string }) => seen.push(String(c.name)));
  await t.rejects(d.putVm(vm), 'the write fails');
  t.equal(d.getVm('desk'), undefined, 'the refused write is not served');
  t.equal(d.version(), version, 'nor counted');
  t.same(seen, [], 'nor announced');
  // Space again: the next write goes through alone, and the refused one never reaches the disk.
  rmdirSync(`${file}.log`);
  await d.putVm({ ...vm, name: 'other' });
  t.equal(d.getVm('other')?.name, 'other');
  await d.close();
  const reopened = new MemoryDirectory(file);
  t.teardown(() => reopened.close());
  t.equal(reopened.getVm('desk'), undefined, 'not on disk either');
  t.equal(reopened.getVm('other')?.name, 'other', 'the later write is');
});
