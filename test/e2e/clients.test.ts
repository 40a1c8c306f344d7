/**
 * Real clients nobody here wrote (curl, socat, vncsnapshot) and a raw-RFB WebSocket client,
 * through a real gateway. They run inside a private network namespace with loopback only
 * (`unshare -n`), so no client can resolve or reach anything but what the test started.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const inner = fileURLToPath(new URL('./clients.inner.ts', import.meta.url));
const probe = spawnSync('unshare', ['-n', 'true']);
const skip = probe.status === 0 ? false : `real-client tests need a private network namespace (unshare -n, i.e. root): ${probe.stderr?.toString().trim()}`;

t.test('real clients in a loopback-only network namespace', { skip }, async (t) => {
  t.spawn('unshare', ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx "${inner}"`], { env: { ...process.env } });
});
