/**
 * Run by rdp.test.ts inside `unshare -n`: xrdp with its own configuration in a temporary folder
 * (no sesman: its login screen is enough), the gateway in-process, and xfreerdp as a user runs it
 * with the command line the portal shows.
 */
import { probeConsole } from '../../gateway/cluster/cluster.js';
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiClient, ok } from '../helpers/api.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { xfreerdpTo } from '../helpers/rdp.js';
import { acceptedConnections } from '../helpers/scenario.js';
import { startXrdp } from '../helpers/xrdp.js';
import { startXvfb } from '../helpers/x11.js';
import { outsideNetns } from '../helpers/netns.js';
import { until } from '../helpers/wait.js';

/** A console ticket the way a user gets one: log in to the API, ask for an RDP ticket. */
async function ticketFromApi(t: Test, gw: TestGateway): Promise<{ connectWithTicket: string; ticket: string }> {
  const api = apiClient(t, gw);
  const { token } = ok(await api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } }), 'login');
  return ok(await api<{ connectWithTicket: string; ticket: string }>('POST', '/api/desktops/win/tickets', { body: { protocol: 'rdp' }, token }), 'ticket');
}

t.test('xfreerdp /v:<ticket>.<vm> /proxy:http://gateway completes X.224 and TLS with xrdp through the tunnel', { skip: outsideNetns }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-rdp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const xrdp = await startXrdp(t, dir);
  // The recovery probe a new owner runs (protocols/probe.ts) recognises xrdp's X.224 Connection Confirm.
  t.equal(await probeConsole('127.0.0.1', xrdp.port, 'rdp', 5000), true, 'the RDP console probe recognises xrdp');
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  // The console's port is known only to the directory; the client names the published 3389.
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp.port, publishedPort: 3389 }], ['alice']);
  const x = await startXvfb(t);

  const { connectWithTicket } = await ticketFromApi(t, gw);
  t.match(connectWithTicket, /^[a-z0-9]{1,63}\.win:3389$/, 'the ticket is a DNS label in front of the VM name');
  const ok = await xfreerdpTo(t, () => acceptedConnections(gw), x.display, dir, [`/v:${connectWithTicket}`, `/proxy:http://127.0.0.1:${gw.port}`, '/cert:ignore', '/auth-only', '/u:x', '/p:y']);
  t.equal(ok.code, 0, 'xfreerdp /auth-only exits 0 once X.224 and TLS went through', { output: ok.out });
  t.match(xrdp.log(), /TLS connection established from 127\.0\.0\.1/, "xrdp's log says the TLS connection was established");
  await t.resolves(
    until(() => gw.logs.some((l) => l.event === 'tunnel' && l.vm === 'win'), { intervalMs: 50 }),
    'the gateway logged the tunnel',
  );
  const tunnel = gw.logs.find((l) => l.event === 'tunnel' && l.vm === 'win')!;
  t.match(tunnel, { protocol: 'rdp', transport: 'connect', user: 'alice' });
  t.ok(Number(tunnel.bytesToClient) > 100 && Number(tunnel.bytesToConsole) > 100, 'the TLS handshake went through the gateway');
  t.notMatch(gw.logText(), connectWithTicket.split('.')[0]!, 'the ticket never reaches the log');

  const established = (): number => (xrdp.log().match(/TLS connection established/g) ?? []).length;
  const before = established();
  // Its path, traced: resolve the made-up target name (fails at once in this namespace), one
  // CONNECT, the 407, exit (0.5-1.4 s in 100 runs beside four busy loops). The one-off kill at 15 s
  // was xfreerdp hanging before it connected at all (xfreerdpTo); the debug log shows the stages.
  const forgedStarted = Date.now();
  const forged = await xfreerdpTo(t, () => acceptedConnections(gw), x.display, dir, [`/v:${'a'.repeat(50)}.win:3389`, `/proxy:http://127.0.0.1:${gw.port}`, '/cert:ignore', '/auth-only', '/u:x', '/p:y', '/log-level:DEBUG'], 15_000);
  t.comment(`forged ticket: xfreerdp gave up after ${Date.now() - forgedStarted} ms (exit ${String(forged.code)})`);
  t.not(forged.code, null, 'xfreerdp gave up by itself, not killed at the deadline', { output: forged.out });
  t.not(forged.code, 0, 'a made-up ticket gets nowhere', { output: forged.out });
  t.ok(gw.logs.some((l) => l.event === 'tunnel-refused'), 'the gateway refused it', { output: forged.out });
  t.equal(established(), before, 'and xrdp saw no connection for it');
});
