/**
 * The full-disk half of directory-write-failure.test.ts: run by it inside a private mount
 * namespace with a 64 KiB tmpfs at argv[2]. Prints one JSON line.
 */
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDirectory } from '../../gateway/directory/memory.js';
import { toVmRecord, vmSchema } from '../../gateway/directory/directory.js';

const dir = process.argv[2];
if (!dir) throw new Error('run by directory-write-failure.test.ts, with the tmpfs folder as its argument');
const file = join(dir, 'directory.json');
const vm = (name: string) => toVmRecord(vmSchema.parse({ name, node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }] }));
const d = new MemoryDirectory(file);
await d.flush();
await d.putVm(vm('first'));
// Fill the tmpfs to its last block: what room is left is in the change log's last page.
const filler = join(dir, 'filler');
spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k'], { stdio: 'ignore' });
const acked = ['first'];
let refused = 0;
for (let i = 0; i < 200 && refused < 3; i++) {
  try {
    await d.putVm(vm(`w-${i}`));
    acked.push(`w-${i}`);
  } catch {
    refused++;
  }
}
rmSync(filler);
await d.putVm(vm('after'));
// A crash now (no close, which would write a whole new base from memory): a restart replays the log.
const again = new MemoryDirectory(file);
process.stdout.write(`${JSON.stringify({ acked: acked.length, refused, missing: acked.filter((n) => again.getVm(n) === undefined), after: again.getVm('after') !== undefined })}\n`);
await again.close();
