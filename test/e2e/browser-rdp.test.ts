/**
 * RDP in the browser: headless Chromium opens an RDP desktop from the portal with IronRDP (the
 * WebAssembly client the gateway serves) over the gateway's RDCleanPath entrance, against a real
 * RDP server (xrdp, TLS security: it has no NLA), sees the server's login screen on the canvas, and
 * reconnects by itself with the resume token when the server restarts. Inside a private network
 * namespace (`unshare -n`, loopback only).
 */
import t from 'tap';
import { missingCommands, netnsUnavailable, spawnInNetns } from '../helpers/netns.js';

const skip = netnsUnavailable() || missingCommands([['xrdp', 'xrdp'], ['chromium', 'chromium']]);

t.test('browser + IronRDP through the portal to xrdp, in a loopback-only network namespace', { skip }, async (t) => {
  spawnInNetns(t, new URL('./browser-rdp.inner.ts', import.meta.url));
});
