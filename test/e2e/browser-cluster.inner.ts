/**
 * Run by browser-cluster.test.ts inside `unshare -n`. A real redis-server and four `oneport serve`
 * processes on loopback: a leader, node B (the VM's owner), node C (its replica) and node A (where
 * the browser enters). The VM's console is one host:port in the directory: an Xvnc painted orange
 * listens there for "the VM on B"; when B goes, that Xvnc is stopped and another one, painted
 * teal, is started on the same port for "the VM restarted on C", as a hypervisor would.
 *
 * Chromium logs in to A's portal once and opens the VM in the viewer. The canvas shows orange
 * (a cross-node `oneport.v1` session: A relays it to B, which holds it next to the console). B is killed (SIGKILL: its sockets die with it) or hung
 * (SIGSTOP: nothing on the wire; the cluster fails it over and A tells the viewer 4001). The
 * viewer must say it is reconnecting, then show teal, without a second login: it reconnects with
 * the resume token of its first ticket (in the SIGKILL run the browser's cookies are even
 * deleted first, so the session cookie cannot be what carries it through).
 */
import t, { type Test } from 'tap';
import type { Page } from 'playwright-core';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { closedPort } from '../helpers/net.js';
import { solidRoot, startXvnc } from '../helpers/x11.js';
import { artifact, launchChromium, loginViaPortal, waitForCanvasColour } from '../helpers/page.js';
import { outsideNetns } from '../helpers/netns.js';


const ORANGE = [0xff, 0x80, 0x00] as const;
const TEAL = [0x00, 0x80, 0x80] as const;

interface Setup {
  leader: ClusterNode;
  /** The VM's owner. */
  b: ClusterNode;
  /** Its replica. */
  c: ClusterNode;
  /** Where the browser enters. */
  a: ClusterNode;
  vncPort: number;
}

async function setup(t: Test): Promise<Setup> {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const nodes = await Promise.all(['n1', 'n2', 'n3', 'n4'].map((id) => cluster.start(id)));
  const leader = await Promise.race(nodes.map((n) => n.waitFor((l) => l.event === 'leader-elected', 30_000).then(() => n)));
  const [b, c, a] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode, ClusterNode];
  const admin = await leader.admin();
  await eventually(async () => admin.putUser('root', { password: 'root-password-1', roles: ['admin'] }).catch(() => undefined), 30_000, 'admin user');
  const token = (await leader.api<{ token: string }>('POST', '/api/login', { body: { user: 'root', password: 'root-password-1' } })).body.token;
  // In this namespace the port space is private; the browser is never told this port.
  const vncPort = await closedPort();
  let r = await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  t.equal(r.status, 200, 'user alice');
  r = await leader.api('PUT', '/api/vms/desk', {
    token,
    body: { node: b.id, replica: c.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: vncPort, publishedPort: 5900 }], users: ['alice'] },
  });
  t.equal(r.status, 200, `VM desk on ${b.id}, replica ${c.id}`);
  for (const n of nodes) {
    await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/desk', { token })).body.node === b.id ? true : undefined), 30_000, `desk known on ${n.id}`);
  }
  return { leader, b, c, a, vncPort };
}

/** Records every text the status bar shows (in the page, so short-lived states are not missed). */
async function recordStatus(page: Page): Promise<void> {
  await page.evaluate(() => {
    const g = globalThis as unknown as {
      document: { getElementById(id: string): { textContent: string | null; dataset: Record<string, string> } | null };
      MutationObserver: new (cb: () => void) => { observe(target: unknown, opts: Record<string, boolean>): void };
      statusLog: string[];
    };
    const el = g.document.getElementById('status')!;
    // No named functions in here: the test runner's transpiler would wrap them in a helper the
    // page does not have.
    g.statusLog = [`${el.dataset.state ?? ''}|${el.textContent ?? ''}`];
    new g.MutationObserver(() => {
      const line = `${el.dataset.state ?? ''}|${el.textContent ?? ''}`;
      if (g.statusLog.at(-1) !== line) g.statusLog.push(line);
    }).observe(el, { childList: true, characterData: true, subtree: true, attributes: true });
  });
}

function statusLog(page: Page): Promise<string[]> {
  return page.evaluate(() => (globalThis as unknown as { statusLog: string[] }).statusLog);
}

for (const how of ['SIGKILL', 'SIGSTOP'] as const) {
  t.test(`portal on node A, VM on node B; B ${how === 'SIGKILL' ? 'killed' : 'hung'} (${how}): the viewer shows the replica's desktop without a login`, { skip: outsideNetns }, async (t) => {
    const tag = how.toLowerCase();
    const { leader, b, c, a, vncPort } = await setup(t);
    const onB = await startXvnc(t, vncPort);
    await solidRoot(onB.display, ORANGE);

    const context = await launchChromium(t);
    const page = await context.newPage();
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(String(e)));
    const requests: string[] = [];
    context.on('request', (r) => requests.push(`${r.method()} ${new URL(r.url()).pathname}`));
    const sockets: string[] = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    const count = (what: string): number => requests.filter((r) => r === what).length;

    await loginViaPortal(page, `https://127.0.0.1:${a.port}/`, 'alice', 'alice-password-1');
    const item = page.locator('li.desktop[data-vm="desk"]');
    await item.waitFor({ timeout: 30_000 });
    await item.locator('[data-protocol=vnc] a.open').click();
    await page.waitForURL(/\/viewer\.html\?vm=desk&protocol=vnc/);
    await page.locator('#status[data-state=connected]').waitFor({ timeout: 30_000 });
    await waitForCanvasColour(page, ORANGE);
    t.pass(`node ${a.id}'s viewer shows the console on ${b.id} (orange)`);
    await page.screenshot({ path: artifact(`browser-cluster-${tag}-before.png`) });
    t.equal(count('POST /api/login'), 1, 'logged in once');
    t.equal(count('POST /api/desktops/desk/tickets'), 1, 'one ticket');

    if (how === 'SIGKILL') {
      // Without its cookie the browser can get no new ticket: only the resume token can bring it back.
      await context.clearCookies();
    }
    await recordStatus(page);
    const mark = leader.logs.length;
    const aMark = a.logs.length;
    b.kill(how);
    t.teardown(() => b.kill('SIGKILL'));
    // B's host is gone, and its console with it; the hypervisor will restart the VM on C.
    await onB.stop();

    await page.locator('#status:not([data-state=connected])').waitFor({ timeout: 30_000 });
    t.match(await page.locator('#status').textContent(), /Reconnecting/, 'the viewer says it is reconnecting');
    await page.screenshot({ path: artifact(`browser-cluster-${tag}-reconnecting.png`) });

    const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'desk', 30_000, { after: mark });
    t.equal(moved.to, c.id, `the leader moved desk to its replica ${c.id}`);
    // The first session (oneport.v1) was held at B, next to the console; A relayed it and logs how that ended.
    const first = await a.waitFor((l) => l.event === 'relay-closed' && l.vm === 'desk', 30_000, { after: aMark });
    t.equal(first.holder, b.id, `the first session entered at ${a.id} and was held at ${b.id}`);
    t.equal(first.end, how === 'SIGSTOP' ? 'rerouted' : 'holder-gone', `the viewer was told to reconnect (4001): ${String(first.end)}`);

    const onC = await startXvnc(t, vncPort);
    await solidRoot(onC.display, TEAL);
    await c.waitFor((l) => l.event === 'vm-running' && l.vm === 'desk', 30_000);
    await page.locator('#status[data-state=connected]').waitFor({ timeout: 60_000 });
    await waitForCanvasColour(page, TEAL);
    t.pass(`the viewer shows the VM restarted on ${c.id} (teal)`);
    await page.screenshot({ path: artifact(`browser-cluster-${tag}-after.png`) });

    const log = await statusLog(page);
    t.comment(`status bar: ${log.join(' -> ')}`);
    t.ok(log.some((s) => /^(waiting|connecting)\|.*Reconnecting/.test(s)), 'the status bar said "Reconnecting"');
    t.notOk(log.some((s) => s.startsWith('stopped|')), 'it never gave up');
    t.equal(count('POST /api/login'), 1, 'no second login');
    t.match(page.url(), /\/viewer\.html\?vm=desk&protocol=vnc$/, 'still on the viewer page');
    t.equal(count('POST /api/desktops/desk/tickets'), 1, 'no new ticket either: the reconnects used the resume token');
    const later = sockets.slice(1);
    t.ok(later.length >= 1, `${later.length} reconnect(s)`);
    for (const url of later) t.match(url, new RegExp(`^wss://127\\.0\\.0\\.1:${a.port}/tunnel/desk/vnc\\?resume=[^&]+$`), 'a reconnect to node A with the resume token');
    t.notOk(sockets.some((u) => u.includes(String(vncPort))), 'the console port is never seen by the browser');
    t.same(problems, [], 'no script errors');
    // The resumed session reaches C: held at C (A relays it), or at A when A opened it while desk was still recovering.
    await page.click('#disconnect');
    await page.locator('#status[data-state=stopped]').waitFor();
    const newSession = (l: { event?: string; vm?: unknown; transport?: unknown; consoleNode?: unknown }): boolean => l.event === 'tunnel' && l.vm === 'desk' && l.transport === 'websocket' && l.consoleNode === c.id;
    const last = await Promise.any([a.waitFor(newSession, 30_000, { after: aMark }), c.waitFor(newSession, 30_000)]);
    t.equal(last.via, 'resume', 'the session on C was opened with the resume token');
  });
}
