/**
 * Run by browser-vnc.test.ts inside `unshare -n`. A real Xvnc with a known picture, the gateway
 * in-process, and headless Chromium using the portal as a person would.
 */
import t from 'tap';
import { startTestGateway } from '../helpers/gateway.js';
import { closedPort } from '../helpers/net.js';
import { solidRoot, startXvnc } from '../helpers/x11.js';
import { artifact, launchChromium, loginViaPortal, sidewaysOverflow, waitForCanvasColour } from '../helpers/page.js';
import { outsideNetns } from '../helpers/netns.js';
import { until } from '../helpers/wait.js';


const ORANGE = [0xff, 0x80, 0x00] as const;
const TEAL = [0x00, 0x80, 0x80] as const;

const launch = launchChromium;

t.test('log in, open the desktop in noVNC, see its picture; the viewer reconnects after the VNC server restarts', { skip: outsideNetns }, async (t) => {
  // In this namespace the port space is private; the browser is never told this port.
  const vncPort = await closedPort();
  let xvnc = await startXvnc(t, vncPort);
  await solidRoot(xvnc.display, ORANGE);

  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: vncPort, publishedPort: 5900 }], ['alice']);

  const context = await launch(t);
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (m) => {
    // Failed requests are checked below by URL (the portal's first /api/me is a 401 by design).
    // noVNC logs an attempt that the gateway refused while the VNC server restarts ("Failed when
    // connecting: Connection closed (code: 4502...)"): the expected retry, not a page error.
    const expected = m.text().startsWith('Failed to load resource') || /^Failed when connecting: Connection closed \(code: 45\d\d/.test(m.text());
    if ((m.type() === 'error' && !expected) || /Content.Security.Policy/i.test(m.text())) problems.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !(r.status() === 401 && new URL(r.url()).pathname === '/api/me')) problems.push(`${r.status()} ${r.url()}`);
  });
  page.on('pageerror', (e) => problems.push(String(e)));
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));

  await loginViaPortal(page, gw.url, 'alice', 'alice-password-1');
  const item = page.locator('li.desktop[data-vm="desk"]');
  await item.waitFor();
  t.equal(await item.locator('.state').textContent(), 'running', 'the desktop is listed with its state');
  t.equal(await item.locator('[data-protocol=vnc] a.vv').count(), 0, 'no .vv for VNC (remote-viewer would resolve the ticket in DNS)');

  await item.locator('[data-protocol=vnc] a.open').click();
  await page.waitForURL(/\/viewer\.html\?vm=desk&protocol=vnc/);
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 30_000 });
  await waitForCanvasColour(page, ORANGE);
  t.pass('the canvas shows the VNC server\'s orange root window');
  await page.screenshot({ path: artifact('browser-vnc-connected.png') });

  // Restart the VNC server; this time the picture is teal, so an old frame cannot pass the check.
  await xvnc.stop();
  await page.locator('#status:not([data-state=connected])').waitFor({ timeout: 15_000 });
  t.match(await page.locator('#status').textContent(), /Reconnect|Connecting/, 'the viewer says it is reconnecting');
  await page.screenshot({ path: artifact('browser-vnc-reconnecting.png') });
  xvnc = await startXvnc(t, vncPort);
  await solidRoot(xvnc.display, TEAL);
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasColour(page, TEAL);
  t.pass('after the restart the viewer reconnected by itself and shows the new picture');
  await page.screenshot({ path: artifact('browser-vnc-reconnected.png') });

  // Every WebSocket went to the gateway's tunnel: the console's own port never reached the page.
  t.ok(sockets.length >= 2, `${sockets.length} WebSocket connections`);
  t.match(sockets[0], new RegExp(`^wss://[^/]+:${gw.port}/tunnel/desk/vnc\\?ticket=[a-z0-9]+$`), 'the first connection with a ticket');
  // Reconnects go back with the resume token of that ticket answer: no new ticket needed.
  const refusals = gw.logs.filter((l) => l.event === 'tunnel-refused');
  for (const url of sockets.slice(1)) t.match(url, new RegExp(`^wss://[^/]+:${gw.port}/tunnel/desk/vnc\\?resume=[^&]+$`), 'a reconnect with the resume token', { refusals });
  t.notOk(sockets.some((u) => u.includes(String(vncPort))), 'the VNC port is never seen by the browser');
  t.same(problems, [], 'no script errors or CSP violations');

  await page.click('#disconnect');
  await page.locator('#status[data-state=stopped]').waitFor();
  const tunnels = () => gw.logs.filter((l) => l.event === 'tunnel' && l.vm === 'desk' && l.transport === 'websocket');
  await t.resolves(until(() => tunnels().length >= 2, { intervalMs: 50 }), 'the gateway logged the tunnels');
  t.ok(tunnels().every((l) => Number(l.bytesToClient) > 12 && Number(l.bytesToConsole) > 12), 'RFB went both ways through the gateway');
});

t.test('a resume token the gateway refuses (4401): the viewer falls back to a fresh ticket at once', { skip: outsideNetns }, async (t) => {
  const vncPort = await closedPort();
  let xvnc = await startXvnc(t, vncPort);
  await solidRoot(xvnc.display, ORANGE);
  const gw = await startTestGateway(t);
  await gw.addUser('carol', 'carol-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: vncPort, publishedPort: 5900 }], ['carol']);
  const context = await launch(t);
  const page = await context.newPage();
  // The first ticket answer carries a forged resume token: the gateway will refuse it.
  let tampered = 0;
  await page.route('**/api/desktops/desk/tickets', async (route) => {
    const res = await route.fetch();
    const body = (await res.json()) as Record<string, unknown>;
    if (tampered++ === 0) body.resume = `${String(body.resume).slice(0, -4)}AAAA`;
    await route.fulfill({ response: res, json: body });
  });
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await loginViaPortal(page, gw.url, 'carol', 'carol-password-1');
  await page.locator('li.desktop[data-vm="desk"] [data-protocol=vnc] a.open').click();
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 30_000 });
  await waitForCanvasColour(page, ORANGE);

  await xvnc.stop();
  await page.locator('#status:not([data-state=connected])').waitFor({ timeout: 15_000 });
  xvnc = await startXvnc(t, vncPort);
  await solidRoot(xvnc.display, TEAL);
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasColour(page, TEAL);
  const kinds = sockets.map((u) => (new URL(u).searchParams.has('resume') ? 'resume' : 'ticket'));
  t.comment(`connections: ${kinds.join(', ')}`);
  t.equal(kinds[0], 'ticket', 'first with the ticket');
  t.equal(kinds[1], 'resume', 'then with the (forged) resume token');
  t.equal(kinds.at(-1), 'ticket', 'and, that refused, back with a fresh ticket');
  t.equal(tampered, 2, 'a second ticket answer was fetched');
  const refused = gw.logs.filter((l) => l.event === 'tunnel-refused' && l.code === 'ONEPORT_ERR_TICKET_INVALID');
  t.ok(refused.length >= 1, 'the gateway refused the forged token');
  t.equal(kinds.filter((k) => k === 'resume').length, 1, 'the refused token was not tried again');
});

t.test('the portal works on a phone-sized screen', { skip: outsideNetns }, async (t) => {
  const gw = await startTestGateway(t);
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('phone-desk', [
    { protocol: 'vnc', host: '127.0.0.1', port: 5999 },
    { protocol: 'rdp', host: '127.0.0.1', port: 3389 },
  ], ['bob']);
  const context = await launch(t);
  const page = await context.newPage();
  await page.setViewportSize({ width: 360, height: 640 });
  await loginViaPortal(page, gw.url, 'bob', 'bob-password-1');
  const item = page.locator('li.desktop[data-vm="phone-desk"]');
  await item.waitFor();
  await item.locator('button.freerdp').click();
  const command = item.locator('.command', { hasText: 'xfreerdp' });
  await command.waitFor();
  const cmd = (await command.textContent()) ?? '';
  t.match(cmd, new RegExp(`^xfreerdp /v:[a-z0-9]+\\.phone-desk:3389 /proxy:http://[^ ]+:${gw.port} `), 'the FreeRDP command carries a ticket in the host name');
  t.match(cmd, /^[A-Za-z0-9 /:.@_-]+$/, 'nothing in it a shell would parse (no <, >, quotes, $): safe to paste');
  t.match(cmd, / \/cert:tofu$/, 'and it trusts a self-signed desktop certificate on first use');
  const overflow = await sidewaysOverflow(page);
  t.ok(overflow <= 0, `nothing sticks out sideways (${overflow} px)`);
  await page.screenshot({ path: artifact('portal-phone.png'), fullPage: true });
});
