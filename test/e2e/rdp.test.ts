/**
 * Stock FreeRDP 2 (`xfreerdp`, under Xvfb) reaches a real RDP server (xrdp) through the gateway's
 * clear-text CONNECT, the console ticket riding in the host name (CONTRACT section 3): FreeRDP
 * sends no proxy credentials and cannot speak TLS to a proxy. Inside a private network namespace
 * (`unshare -n`, loopback only), so the made-up host name `<ticket>.<vm>` can never be resolved
 * on a real network.
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['xrdp', 'xrdp'], ['xfreerdp', 'freerdp2-x11'], ['Xvfb', 'xvfb']]);

t.test('xfreerdp through clear-text CONNECT to xrdp, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./rdp.inner.ts', import.meta.url));
});
