/**
 * Stock FreeRDP 2 (`xfreerdp /g: /gt:http /gat:`, under Xvfb) reaches a real RDP server (xrdp)
 * through the gateway's RD Gateway entrance (MS-TSGU over HTTP), over the WebSocket variant and
 * the legacy pair of requests, on one node and with the pair's two requests on two nodes. Inside
 * a private network namespace (`unshare -n`, loopback only): the VM name FreeRDP is given can
 * never be resolved on a real network.
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['xrdp', 'xrdp'], ['xfreerdp', 'freerdp2-x11'], ['Xvfb', 'xvfb'], ['redis-server', 'redis-server']]);

t.test('xfreerdp through the RD Gateway entrance to xrdp, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./rdg.inner.ts', import.meta.url));
});
