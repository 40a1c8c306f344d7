/**
 * The browser across a cluster and through a failover: headless Chromium logs in to the portal of
 * node A and opens a VM whose console sits on node B (the tunnel hops A -> B over mutual TLS);
 * then B dies (SIGKILL) or hangs (SIGSTOP), the VM is restarted on its replica C, and the viewer
 * says it is reconnecting, then shows C's picture, with no new login. Real redis-server, four
 * gateway processes, two Xvnc servers, all inside a private network namespace (`unshare -n`,
 * loopback only).
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip =
  netnsUnavailable() ||
  missingCommands([
    ['Xvnc', 'tigervnc-standalone-server'],
    ['xsetroot', 'x11-xserver-utils'],
    ['chromium', 'chromium'],
    ['redis-server', 'redis-server'],
  ]);

t.test('browser on node A, VM on node B, failover to C: the viewer follows without a login', { skip }, async (t) => {
  spawnInNetns(t, new URL('./browser-cluster.inner.ts', import.meta.url));
});
