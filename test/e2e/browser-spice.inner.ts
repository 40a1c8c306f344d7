/**
 * Run by browser-spice.test.ts inside `unshare -n`: QEMU's SPICE server showing the BIOS screen,
 * the gateway in-process, headless Chromium opening the desktop from the portal.
 */
import t from 'tap';
import { startTestGateway } from '../helpers/gateway.js';
import { probeConsole } from '../../gateway/cluster/cluster.js';
import { closedPort } from '../helpers/net.js';
import { startQemuSpice } from '../helpers/qemu.js';
import { artifact, launchChromium, loginViaPortal, waitForCanvasText } from '../helpers/page.js';
import { outsideNetns } from '../helpers/netns.js';


t.test('log in, open the SPICE desktop in spice-html5, see the BIOS screen; reconnect after QEMU restarts', { skip: outsideNetns }, async (t) => {
  const spicePort = await closedPort();
  let qemu = await startQemuSpice(t, spicePort);
  // The recovery probe a new owner runs (protocols/probe.ts) recognises QEMU's SPICE link reply.
  t.equal(await probeConsole('127.0.0.1', spicePort, 'spice', 5000), true, 'the SPICE console probe recognises QEMU');
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('vm1', [{ protocol: 'spice', host: '127.0.0.1', port: spicePort, publishedPort: 5900 }], ['alice']);

  const context = await launchChromium(t);
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(String(e)));
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));

  await loginViaPortal(page, gw.url, 'alice', 'alice-password-1');
  await page.locator('li.desktop[data-vm="vm1"] [data-protocol=spice] a.open').click();
  await page.waitForURL(/\/viewer\.html\?vm=vm1&protocol=spice/);
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasText(page);
  t.pass('the SPICE display shows the BIOS text screen');
  await page.screenshot({ path: artifact('browser-spice-connected.png') });
  const firstSession = sockets.length;
  t.ok(firstSession >= 3, `one WebSocket per SPICE channel (${firstSession}: main, display, inputs, cursor...)`);

  await qemu.stop();
  await page.locator('#status:not([data-state=connected])').waitFor({ timeout: 15_000 });
  qemu = await startQemuSpice(t, spicePort);
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasText(page);
  t.pass('after QEMU restarted the viewer reconnected by itself');
  await page.screenshot({ path: artifact('browser-spice-reconnected.png') });

  t.ok(sockets.length > firstSession, 'new WebSockets for the new session');
  for (const url of sockets.slice(0, firstSession)) t.match(url, new RegExp(`^wss://[^/]+:${gw.port}/tunnel/vm1/spice\\?ticket=[a-z0-9]+$`), 'first session: the ticket');
  // Reconnects use the resume token; spice-html5 reports no close code, so after a resume that did
  // not get through the viewer takes a fresh ticket: either may carry the new session.
  for (const url of sockets.slice(firstSession)) t.match(url, new RegExp(`^wss://[^/]+:${gw.port}/tunnel/vm1/spice\\?(ticket=[a-z0-9]+|resume=[^&]+)$`), 'reconnect: resume token or ticket');
  t.same(problems, [], 'no script errors or CSP violations');
  const tunnels = gw.logs.filter((l) => l.event === 'tunnel' && l.vm === 'vm1');
  t.ok(tunnels.length >= firstSession, `the gateway carried the channels (${tunnels.length} tunnels ended so far)`);
});
