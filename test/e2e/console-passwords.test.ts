/**
 * Console passwords kept in the directory, with real clients nobody here wrote: vncsnapshot
 * (through socat's CONNECT) and noVNC in headless Chromium against Xvnc with -rfbauth; spice-html5
 * against QEMU's SPICE with a password (remote-viewer's run is in remote-viewer.inner.ts). Users
 * never type or see the console password; a wrong stored one is a clear message, not a loop.
 * Everything runs inside a private network namespace (`unshare -n`, loopback only).
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip =
  netnsUnavailable() ||
  missingCommands([['Xvnc', 'tigervnc-standalone-server'], ['vncpasswd', 'tigervnc-tools'], ['xsetroot', 'x11-xserver-utils'], ['vncsnapshot', 'vncsnapshot'], ['socat', 'socat'], ['chromium', 'chromium'], ['qemu-system-x86_64', 'qemu-system-x86']]);

t.test('console passwords with real clients, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./console-passwords.inner.ts', import.meta.url));
});
