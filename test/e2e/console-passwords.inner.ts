/**
 * Run by console-passwords.test.ts inside `unshare -n`: Xvnc and QEMU asking for passwords that
 * only the gateway's directory holds, and the clients users really run.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { startTestGateway } from '../helpers/gateway.js';
import { closedPort, freePort, socatListening } from '../helpers/net.js';
import { solidRoot, startXvncWithPassword } from '../helpers/x11.js';
import { startQemuSpiceWithPassword } from '../helpers/qemu.js';
import { artifact, launchChromium, loginViaPortal, waitForCanvasColour, waitForCanvasText } from '../helpers/page.js';
import { outsideNetns } from '../helpers/netns.js';
import { vncsnapshot } from '../helpers/rfb-client.js';

const GREEN = [0x20, 0xc0, 0x40] as const;

t.test('VNC: vncsnapshot and noVNC open an Xvnc whose password they never had; a wrong stored one stops the viewer with a clear message', { skip: outsideNetns }, async (t) => {
  const vncPort = await closedPort();
  const x = await startXvncWithPassword(t, vncPort, 'only-0neport');
  await solidRoot(x.display, GREEN);
  const gw = await startTestGateway(t, { tunnel: { protocolCheck: true } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('locked', [{ protocol: 'vnc', host: '127.0.0.1', port: vncPort, publishedPort: 5900, password: 'only-0neport' }], ['alice']);
  await gw.addVm('stale', [{ protocol: 'vnc', host: '127.0.0.1', port: vncPort, publishedPort: 5900, password: 'old-one' }], ['alice']);

  // vncsnapshot knows no proxies: socat's CONNECT client gives it a local port.
  const { ticket } = await gw.ticket('alice', 'locked');
  const local = await freePort();
  const socat = spawn('socat', ['-d', '-d', `TCP-LISTEN:${local},bind=127.0.0.1,reuseaddr`, `PROXY:127.0.0.1:${ticket}.locked:5900,proxyport=${gw.port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => socat.kill('SIGKILL'));
  await socatListening(socat.stderr);
  const shot = await vncsnapshot(t, local);
  t.equal(shot.code, 0, `vncsnapshot exited 0, never asked for a password (${shot.log.trim()})`);
  const got = shot.pixel(160, 120);
  t.ok(shot.width === 320 && got.every((v, i) => Math.abs(v - (GREEN[i] ?? 0)) <= 40), `a picture of the desktop (${shot.width}x${shot.height}, ${got.join(',')})`);

  const context = await launchChromium(t);
  const page = await context.newPage();
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await loginViaPortal(page, gw.url, 'alice', 'alice-password-1');
  await page.locator('li.desktop[data-vm="locked"] [data-protocol=vnc] a.open').click();
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 30_000 });
  await waitForCanvasColour(page, GREEN);
  t.pass('noVNC shows the desktop: the gateway offered it security type None');
  await page.screenshot({ path: artifact('console-password-vnc.png') });

  await page.goto(new URL('/viewer.html?vm=stale&protocol=vnc', gw.url).href);
  await page.locator('#status[data-state=stopped]').waitFor({ timeout: 30_000 });
  t.match(await page.locator('#status').textContent(), /console password/, 'wrong stored password: the viewer says so and stops');
  await page.screenshot({ path: artifact('console-password-vnc-wrong.png') });
  t.equal(sockets.filter((u) => u.includes('/tunnel/stale/')).length, 1, 'and does not retry');
  t.ok(gw.logs.some((l) => l.event === 'console-handshake-failed' && l.vm === 'stale' && l.level === 40), 'the admin gets a warning naming the VM');
  t.notOk(/only-0neport|old-one/.test(gw.logText()), 'no console password in the logs');
});

t.test('SPICE: spice-html5 opens a QEMU console whose password it never had; a wrong stored one stops the viewer with a clear message', { skip: outsideNetns }, async (t) => {
  const spicePort = await closedPort();
  await startQemuSpiceWithPassword(t, spicePort, 'qemu-s3cret');
  const gw = await startTestGateway(t, { tunnel: { protocolCheck: true } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('spicy', [{ protocol: 'spice', host: '127.0.0.1', port: spicePort, publishedPort: 5900, password: 'qemu-s3cret' }], ['alice']);
  await gw.addVm('sour', [{ protocol: 'spice', host: '127.0.0.1', port: spicePort, publishedPort: 5900, password: 'qemu-s3creT' }], ['alice']);

  const context = await launchChromium(t);
  const page = await context.newPage();
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await loginViaPortal(page, gw.url, 'alice', 'alice-password-1');
  await page.locator('li.desktop[data-vm="spicy"] [data-protocol=spice] a.open').click();
  await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
  await waitForCanvasText(page);
  t.pass('spice-html5 shows the BIOS screen: every channel linked with the swapped ticket');
  await page.screenshot({ path: artifact('console-password-spice.png') });
  const linked = gw.logs.filter((l) => l.event === 'console-handshake-failed');
  t.same(linked, [], 'no handshake failed');

  await page.goto(new URL('/viewer.html?vm=sour&protocol=spice', gw.url).href);
  await page.locator('#status[data-state=stopped]').waitFor({ timeout: 30_000 });
  t.match(await page.locator('#status').textContent(), /console password/, 'wrong stored password: the viewer says so and stops');
  await page.screenshot({ path: artifact('console-password-spice-wrong.png') });
  t.equal(sockets.filter((u) => u.includes('/tunnel/sour/')).length, 1, 'one attempt (the main channel), no retry loop');
  t.ok(gw.logs.some((l) => l.event === 'console-handshake-failed' && l.vm === 'sour' && l.level === 40), 'the admin gets a warning naming the VM');
  t.notOk(/qemu-s3cre/i.test(gw.logText()), 'no console password in the logs');
});
