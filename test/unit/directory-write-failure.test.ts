/**
 * The embedded directory (directory/memory.ts) when its state file cannot be written (disk full,
 * found by bench/faults.ts with the state folder in a full tmpfs: 20 of 20 writes answered
 * 500 ONEPORT_ERR_INTERNAL, and all 20 were served by the node anyway). A write the caller is told
 * failed must not be visible: today the change is applied in memory first and stays there, and the
 * next successful save writes it to disk too, so a write refused with an error takes effect later.
 * Here the write fails because the temporary file's path is taken by a folder (EISDIR), the same
 * code path as ENOSPC.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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
  mkdirSync(`${file}.${process.pid}.tmp`);
  const vm = toVmRecord(vmSchema.parse({ name: 'desk', node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }] }));
  await t.rejects(d.putVm(vm), 'the write fails');
  // TODO marks the known bug: the assertion runs and shows "not ok" without failing the suite.
  t.equal(d.getVm('desk'), undefined, 'the refused write is not served', { todo: 'bug: memory.ts applies the change before saving and never rolls it back' });
});
