/**
 * Run by native-rdp.test.ts inside `unshare -n`: two xrdp (VMs win1 and win2, each with its own
 * log), the gateway in-process, and xfreerdp connecting straight to the gateway's port as a user
 * would, with the ticket from the portal's API in `/pcb:` or `/load-balance-info:`, or with the
 * portal's native .rdp file. Which xrdp logged the TLS connection shows which console was reached.
 */
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiClient, ok } from '../helpers/api.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { connectionCount } from '../helpers/scenario.js';
import { type Run, xfreerdpTo } from '../helpers/rdp.js';
import { startXrdp } from '../helpers/xrdp.js';
import { startXvfb } from '../helpers/x11.js';
import { outsideNetns } from '../helpers/netns.js';
import { until } from '../helpers/wait.js';

const ESTABLISHED = /TLS connection established from 127\.0\.0\.1/g;

const xfreerdpToGateway = (t: Test, gw: TestGateway, display: string, home: string, args: string[]): Promise<Run> =>
  xfreerdpTo(t, () => connectionCount(gw, 'rdp'), display, home, args);

t.test('xfreerdp straight to the one port reaches the xrdp its ticket names', { skip: outsideNetns }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-native-rdp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const consoles = { win1: join(dir, 'win1'), win2: join(dir, 'win2') };
  for (const d of Object.values(consoles)) mkdirSync(d);
  const xrdp1 = await startXrdp(t, consoles.win1);
  const xrdp2 = await startXrdp(t, consoles.win2);
  const established = { win1: () => (xrdp1.log().match(ESTABLISHED) ?? []).length, win2: () => (xrdp2.log().match(ESTABLISHED) ?? []).length };
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win1', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp1.port }], ['alice']);
  await gw.addVm('win2', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp2.port }], ['alice']);
  const x = await startXvfb(t);
  const api = apiClient(t, gw, '127.0.0.1');
  const { token } = ok(await api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } }), 'login');
  const ticket = async (vm: string): Promise<string> => ok(await api<{ ticket: string }>('POST', `/api/desktops/${vm}/tickets`, { body: { protocol: 'rdp' }, token }), 'ticket').ticket;
  const common = ['/cert:ignore', '/auth-only', '/u:x', '/p:y'];
  const gateway = `/v:127.0.0.1:${gw.port}`;
  const tickets: string[] = [];

  const runs: Array<[string, string, keyof typeof consoles, (tk: string) => string[]]> = [
    ['/pcb:', 'win1', 'win1', (tk) => [gateway, `/pcb:${tk}.win1`]],
    ['/load-balance-info:', 'win2', 'win2', (tk) => [gateway, `/load-balance-info:${tk}.win2`]],
    ['/load-balance-info: to the other VM, same port', 'win1', 'win1', (tk) => [gateway, `/load-balance-info:${tk}.win1`]],
  ];
  for (const [name, vm, reached, args] of runs) {
    const before = { win1: established.win1(), win2: established.win2() };
    const tk = await ticket(vm);
    tickets.push(tk);
    const r = await xfreerdpToGateway(t, gw, x.display, dir, [...args(tk), ...common]);
    t.equal(r.code, 0, `${name}: xfreerdp /auth-only exits 0 once X.224 and TLS went through`, { output: r.out });
    const other = reached === 'win1' ? 'win2' : 'win1';
    t.equal(established[reached](), before[reached] + 1, `${name}: ${reached}'s xrdp logged the TLS connection`);
    t.equal(established[other](), before[other], `${name}: ${other}'s xrdp saw nothing`);
  }

  // The portal's native .rdp file, as a user downloads and opens it.
  const file = await api<string>('GET', '/api/desktops/win2/console.rdp?variant=native', { token });
  t.equal(file.status, 200);
  const path = join(dir, 'win2-native.rdp');
  writeFileSync(path, file.body);
  tickets.push(/loadbalanceinfo:s:([a-z2-7]+)\./.exec(file.body)?.[1] ?? '');
  const before2 = established.win2();
  const fromFile = await xfreerdpToGateway(t, gw, x.display, dir, [path, ...common]);
  t.equal(fromFile.code, 0, 'xfreerdp <vm>-native.rdp reaches the console', { output: fromFile.out });
  t.equal(established.win2(), before2 + 1, "win2's xrdp logged it");

  await until(() => gw.logs.filter((l) => l.event === 'tunnel').length === 4, { intervalMs: 50, timeoutMs: 10_000 });
  const lines = gw.logs.filter((l) => l.event === 'tunnel');
  for (const l of lines) t.match(l, { protocol: 'rdp', transport: 'rdp', user: 'alice', via: 'ticket' }, `tunnel log line for ${String(l.vm)}`);
  t.same(lines.map((l) => l.vm).sort(), ['win1', 'win1', 'win2', 'win2']);
  t.ok(lines.every((l) => Number(l.bytesToClient) > 100 && Number(l.bytesToConsole) > 100), 'the TLS handshakes went through the gateway');
  const metrics = await gw.ctx.metrics.tunnels.get();
  t.equal(metrics.values.find((v) => v.labels.transport === 'rdp' && v.labels.result === 'ok')?.value, 4, 'oneport_tunnels_total{transport="rdp",result="ok"}');
  for (const tk of tickets) t.notOk(gw.logText().includes(tk), 'no ticket in the gateway log');

  // A forged ticket: refused at once (FreeRDP retries twice after the failure), no console connection.
  const before = { win1: established.win1(), win2: established.win2() };
  const started = Date.now();
  const forged = await xfreerdpToGateway(t, gw, x.display, dir, [gateway, `/load-balance-info:${'a'.repeat(50)}.win1`, ...common]);
  t.comment(`forged ticket: xfreerdp gave up after ${Date.now() - started} ms (exit ${String(forged.code)})`);
  t.not(forged.code, 0, 'a made-up ticket gets nowhere', { output: forged.out });
  t.not(forged.code, null, 'and xfreerdp was not left hanging', { output: forged.out });
  t.same({ win1: established.win1(), win2: established.win2() }, before, 'neither xrdp saw a connection for it');
  t.ok(gw.logs.some((l) => l.event === 'tunnel-refused' && l.transport === 'rdp' && l.code === 'ONEPORT_ERR_TICKET_INVALID'), 'the gateway logged the refusal');
});

