/**
 * Stock FreeRDP 2 (`xfreerdp`, under Xvfb) connects straight to the gateway's one port with native
 * RDP, the console ticket in the preconnection blob (`/pcb:`) or the routing token
 * (`/load-balance-info:`), or from the portal's native .rdp file, and reaches the xrdp of the VM
 * its ticket names (two VMs, two xrdp, one port). Inside a private network namespace
 * (`unshare -n`, loopback only).
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['xrdp', 'xrdp'], ['xfreerdp', 'freerdp2-x11'], ['Xvfb', 'xvfb']]);

t.test('xfreerdp /pcb: and /load-balance-info: to two xrdp through the one port, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./native-rdp.inner.ts', import.meta.url));
});
