/**
 * The portal in a real browser against a real VNC server: headless Chromium (driven by
 * playwright-core, never a downloaded browser) logs in, opens a desktop served by TigerVNC's
 * Xvnc through the gateway's WebSocket tunnel with noVNC, checks the canvas shows the picture,
 * and reconnects by itself when the VNC server restarts. Everything runs inside a private network
 * namespace (`unshare -n`, loopback only): the browser can reach nothing but what the test started.
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['Xvnc', 'tigervnc-standalone-server'], ['xsetroot', 'x11-xserver-utils'], ['chromium', 'chromium']]);

t.test('browser + noVNC through the portal, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./browser-vnc.inner.ts', import.meta.url));
});
