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
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
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

/**
 * A really full disk (a 64 KiB tmpfs in a private mount namespace; found by bench/faults.ts): the
 * change log's last page still had room, so the write that filled it was cut short, and Node
 * reports a short write as success. That write was acknowledged with half its line on disk: at a
 * start after a crash (a clean stop writes a whole new base from memory and hid it) the log ended
 * at the torn line, and every write after it (made once space was freed) was lost with it. The
 * torn part is now taken back and the write refused.
 */
const ns = spawnSync('unshare', ['-m', 'true']);
const noMountNs = ns.status === 0 ? false : `needs a private mount namespace (unshare -m, i.e. root): ${ns.stderr?.toString().trim()}`;

t.test('a write cut short by a full disk is refused and leaves no torn line behind', { skip: noMountNs }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-dirfull-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const inner = fileURLToPath(new URL('./directory-write-failure.inner.ts', import.meta.url));
  const script = `mount -t tmpfs -o size=64k tmpfs "${dir}" && exec "${process.execPath}" --import tsx "${inner}" "${dir}"`;
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 0, `the inner script ran (${r.stderr.slice(-600)})`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { acked: number; refused: number; missing: string[]; after: boolean };
  t.ok(out.acked > 0, `${out.acked} writes acknowledged before the disk was full`);
  t.ok(out.refused > 0, 'then writes refused');
  t.same(out.missing, [], 'every acknowledged write is there after a restart');
  t.ok(out.after, 'and so is the write made once space was freed');
});
