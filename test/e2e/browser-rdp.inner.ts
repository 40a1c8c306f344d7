/**
 * Run by browser-rdp.test.ts inside `unshare -n`. A real xrdp whose login screen has a known
 * colour, the gateway in-process, and headless Chromium using the portal as a person would.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestGateway } from '../helpers/gateway.js';
import { startXrdp } from '../helpers/xrdp.js';
import { artifact, launchChromium, loginViaPortal, waitForCanvasColour, watchPage } from '../helpers/page.js';
import { outsideNetns } from '../helpers/netns.js';
import { until } from '../helpers/wait.js';

// xrdp paints its login screen at 16 bits per pixel: colours that survive RGB565 exactly.
const ORANGE = [0xff, 0x82, 0x00] as const;
const TEAL = [0x00, 0x82, 0x84] as const;
/** xrdp paints its login box in the middle: look at the screen's background, near the corners. */
const CORNERS: ReadonlyArray<readonly [number, number]> = [[0.03, 0.05], [0.97, 0.05], [0.03, 0.95], [0.97, 0.95]];
const background = (rgb: readonly number[]): string[] => [`ls_top_window_bg_color=${rgb.map((c) => c.toString(16).padStart(2, '0')).join('')}`];

t.test('log in, open the RDP desktop in the browser, see xrdp\'s screen; the viewer reconnects after xrdp restarts', { skip: outsideNetns }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-browser-rdp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let xrdp = await startXrdp(t, dir, { loginScreen: true, globals: background(ORANGE) });

  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp.port, publishedPort: 3389 }], ['alice']);

  const context = await launchChromium(t);
  const page = await context.newPage();
  // Attempts refused while xrdp restarts are the expected retries.
  const { problems, sockets, console: consoleLines } = watchPage(page, /WebSocket connection to .* failed/);

  await loginViaPortal(page, gw.url, 'alice', 'alice-password-1');
  const item = page.locator('li.desktop[data-vm="win"]');
  await item.waitFor();
  await item.locator('[data-protocol=rdp] a.open').click();
  await page.waitForURL(/\/viewer\.html\?vm=win&protocol=rdp/);
  // The viewer asks for the Windows credentials first; they go to the desktop, not to the API.
  await page.locator('#rdp-login').waitFor();
  await page.fill('#rdp-login input[name=user]', 'winuser');
  await page.fill('#rdp-login input[name=password]', 'win-secret-9');
  await page.click('#rdp-login button[type=submit]');
  // What went wrong, if it did: the page's console, the gateway's tunnel lines, xrdp's log.
  const explain = async (): Promise<void> => {
    t.comment(`status: ${await page.locator('#status').textContent()}`);
    t.comment(consoleLines.slice(-20).join('\n'));
    t.comment(gw.logs.filter((l) => /tunnel/.test(String(l.event))).map((l) => JSON.stringify(l)).join('\n'));
    t.comment(`${xrdp.log().split('\n').slice(-25).join('\n')}\n${xrdp.output()}`);
  };
  try {
    await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
    await waitForCanvasColour(page, ORANGE, 30_000, CORNERS);
  } catch (e) {
    await explain();
    throw e;
  } finally {
    await page.screenshot({ path: artifact('browser-rdp-connected.png') });
  }
  t.pass('the canvas shows xrdp\'s orange login screen, drawn by IronRDP from the RDP stream');
  t.match(xrdp.log(), /TLS connection established from 127\.0\.0\.1/, 'xrdp did TLS with the gateway');

  // Restart xrdp with a teal screen: the viewer comes back by itself with its resume token.
  await xrdp.stop();
  await page.locator('#status:not([data-state=connected])').waitFor({ timeout: 15_000 });
  t.match(await page.locator('#status').textContent(), /Reconnect|Connecting/, 'the viewer says it is reconnecting');
  xrdp = await startXrdp(t, dir, { loginScreen: true, port: xrdp.port, globals: background(TEAL) });
  try {
    await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
    await waitForCanvasColour(page, TEAL, 30_000, CORNERS);
  } catch (e) {
    await explain();
    throw e;
  } finally {
    await page.screenshot({ path: artifact('browser-rdp-reconnected.png') });
  }
  t.pass('after the restart the viewer reconnected by itself and shows the new screen');

  t.ok(sockets.length >= 2, `${sockets.length} WebSocket connections`);
  for (const url of sockets) t.match(url, new RegExp(`^wss://[^/]+:${gw.port}/rdcleanpath/win$`), 'every connection went to the RDCleanPath entrance, with nothing in the URL');
  const tunnels = () => gw.logs.filter((l) => l.event === 'tunnel' && l.vm === 'win' && l.transport === 'rdcleanpath');
  await page.click('#disconnect');
  await page.locator('#status[data-state=stopped]').waitFor();
  await t.resolves(until(() => tunnels().length >= 2, { intervalMs: 50 }), 'the gateway logged the tunnels');
  t.equal(tunnels()[0]?.via, 'ticket', 'the first with the ticket');
  t.ok(tunnels().slice(1).some((l) => l.via === 'resume'), 'a reconnect with the resume token (no new ticket)');
  t.ok(tunnels().every((l) => Number(l.bytesToClient) > 1000 && Number(l.bytesToConsole) > 100), 'RDP went both ways through the gateway');
  t.notMatch(gw.logText(), 'win-secret-9', 'the Windows password never reaches the gateway\'s log');
  t.same(problems, [], 'no script errors or CSP violations');
});

t.test('a resume token the gateway refuses (RDCleanPath 401, close 4401): the viewer gets a fresh ticket at once', { skip: outsideNetns }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-browser-rdp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let xrdp = await startXrdp(t, dir, { loginScreen: true, globals: background(ORANGE) });
  const gw = await startTestGateway(t);
  await gw.addUser('carol', 'carol-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp.port }], ['carol']);
  const context = await launchChromium(t);
  const page = await context.newPage();
  // The first ticket answer carries a forged resume token: the gateway will refuse it.
  let answers = 0;
  await page.route('**/api/desktops/win/tickets', async (route) => {
    const res = await route.fetch();
    const body = (await res.json()) as Record<string, unknown>;
    if (answers++ === 0) body.resume = `${String(body.resume).slice(0, -4)}AAAA`;
    await route.fulfill({ response: res, json: body });
  });
  await loginViaPortal(page, gw.url, 'carol', 'carol-password-1');
  await page.locator('li.desktop[data-vm="win"] [data-protocol=rdp] a.open').click();
  await page.fill('#rdp-login input[name=user]', 'winuser');
  await page.click('#rdp-login button[type=submit]');
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasColour(page, ORANGE, 30_000, CORNERS);

  // Every status line the viewer shows from here on (they pass quickly).
  await page.evaluate(() => {
    const g = globalThis as unknown as { statuses: string[]; document: { getElementById(id: string): { textContent: string } }; MutationObserver: new (cb: () => void) => { observe(n: unknown, o: object): void } };
    g.statuses = [];
    const el = g.document.getElementById('status');
    new g.MutationObserver(() => g.statuses.push(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
  });
  await xrdp.stop();
  await page.locator('#status:not([data-state=connected])').waitFor({ timeout: 15_000 });
  xrdp = await startXrdp(t, dir, { loginScreen: true, port: xrdp.port, globals: background(TEAL) });
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasColour(page, TEAL, 30_000, CORNERS);
  const statuses = await page.evaluate(() => (globalThis as unknown as { statuses: string[] }).statuses);
  // Only the gateway's close code (4401, read off IronRDP's WebSocket) says "refused": without it the
  // viewer would still get a ticket, but only after a backoff, and say something else.
  t.ok(statuses.some((s) => s.startsWith('resume refused, getting a new ticket')), 'the viewer read the 4401 and said why it gets a new ticket');
  const refused = gw.logs.filter((l) => l.event === 'tunnel-refused' && l.transport === 'rdcleanpath' && l.status === 401);
  t.equal(refused.length, 1, 'the gateway refused the forged resume token once');
  t.equal(answers, 2, 'and the viewer fetched a fresh ticket instead of trying the token again');
});
