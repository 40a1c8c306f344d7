/**
 * remote-viewer (virt-viewer, spice-gtk) opens the .vv file the portal hands out and reaches
 * QEMU's SPICE server through the gateway's clear-text CONNECT, the ticket in the host name; then
 * the same with `proxy=https://` (TLS CONNECT, the gateway's CA trusted through a bind-mounted
 * system bundle in a private mount namespace). Inside a private network namespace (`unshare -n`,
 * loopback only).
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['remote-viewer', 'virt-viewer'], ['qemu-system-x86_64', 'qemu-system-x86'], ['Xvfb', 'xvfb']]);

t.test("remote-viewer with the portal's .vv file, in a loopback-only network namespace", { skip }, async (t) => {
  spawnInNetns(t, new URL('./remote-viewer.inner.ts', import.meta.url));
});
