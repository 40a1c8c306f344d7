/**
 * The portal's SPICE viewer (spice-html5) in headless Chromium against QEMU's SPICE server,
 * through the gateway's WebSocket tunnel: every SPICE channel is its own WebSocket with the same
 * ticket. Inside a private network namespace (`unshare -n`, loopback only).
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['qemu-system-x86_64', 'qemu-system-x86'], ['chromium', 'chromium']]);

t.test('browser + spice-html5 through the portal, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./browser-spice.inner.ts', import.meta.url));
});
