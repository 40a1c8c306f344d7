/**
 * Session continuity on one node: clients of a VM that is changing hands are held (CONNECT gets no
 * status line, a WebSocket stays open) and carried through once it is back, or refused with
 * 503 / 4503 after the hold time; live tunnels of a VM whose owner changes are ended on purpose
 * (4001 with retryMs, or a closed CONNECT) and the client comes back with its resume token, no
 * login; resume tokens are refused for another user, another VM, when expired, and after the
 * user's sessions were revoked.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { rawRequest, readResponse, echoRoundTrip, basic, closedPort, freePort } from '../helpers/net.js';
import { fixedPortConsole } from '../helpers/console.js';
import { until } from '../helpers/wait.js';
import { closeOf, opened, openWs } from '../helpers/ws.js';
import { mintToken } from '../../gateway/auth/tokens.js';
import type { ConfigInput } from '../../gateway/config.js';


async function setup(t: Test, config: ConfigInput = {}): Promise<{ gw: TestGateway; port: number }> {
  const gw = await startTestGateway(t, config);
  const port = await freePort();
  await gw.addUser('alice', 'alice-password-1');
  await gw.addUser('bob', 'bob-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port }], ['alice', 'bob']);
  await gw.addVm('other', [{ protocol: 'vnc', host: '127.0.0.1', port: await closedPort() }], ['alice']);
  return { gw, port };
}

async function setState(gw: TestGateway, state: 'running' | 'recovering' | 'migrating' | 'down', extra: Record<string, unknown> = {}): Promise<void> {
  const vm = gw.ctx.dir.getVm('desk')!;
  await gw.ctx.dir.putVm({ ...vm, state, ...extra });
}

t.test('a CONNECT client of a recovering VM is held, then carried through when it is back', async (t) => {
  const { gw, port } = await setup(t);
  await setState(gw, 'recovering', { epoch: 1 });
  const { ticket } = await gw.ticket('alice', 'desk');
  const s = net.connect(gw.port, '127.0.0.1');
  s.on('error', () => {});
  t.teardown(() => s.destroy());
  await once(s, 'connect');
  let early = '';
  s.on('data', (d: Buffer) => (early += d.toString('latin1')));
  s.write(`CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`);
  await waitLog(gw, (l) => l.event === 'tunnel-hold' && l.vm === 'desk');
  t.equal(early, '', 'no status line while held');
  const restarted = await fixedPortConsole(t, port, (s) => s.pipe(s));
  // Same tick: no byte can slip between the two listeners.
  s.removeAllListeners('data');
  const response = readResponse(s);
  await setState(gw, 'running', { epoch: 1 });
  const res = await response;
  t.match(res.head, /^HTTP\/1\.1 200/, '200 once the VM runs again');
  t.equal((await echoRoundTrip(s, Buffer.from('back'))).toString(), 'back');
  t.equal(restarted.accepted(), 1);
  const held = await waitLog(gw, (l) => l.event === 'tunnel-held');
  t.ok(Number(held.ms) >= 0, `held for ${String(held.ms)} ms`);
});

t.test('a held client gets 503 + Retry-After (CONNECT) or 4503 (WebSocket) when the VM never comes back', async (t) => {
  const { gw } = await setup(t, { tunnel: { holdMs: 600 } });
  await setState(gw, 'migrating');
  const { ticket } = await gw.ticket('alice', 'desk');
  const started = Date.now();
  const res = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`);
  t.match(res.head, /^HTTP\/1\.1 503/, '503');
  t.match(res.head, /Retry-After: \d+/i, 'with Retry-After');
  t.match(res.body, /ONEPORT_ERR_VM_RECOVERING/);
  t.ok(Date.now() - started >= 500, 'after the hold time');
  const { ticket: t2 } = await gw.ticket('alice', 'desk');
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${t2}`);
  const closed = await closeOf(ws);
  t.equal(closed.code, 4503, 'WebSocket: 4503');
  t.match(closed.reason, /retryMs/, 'with a retry hint');
});

t.test('a console that refuses while its VM runs on a live owner is not held: 502 at once', async (t) => {
  const { gw } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'other');
  const res = await rawRequest(gw.port, `CONNECT other:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`);
  t.match(res.head, /^HTTP\/1\.1 502/);
  t.notOk(gw.logs.some((l) => l.event === 'tunnel-hold' && l.vm === 'other'), 'never held');
});

t.test('a planned move ends live tunnels on purpose; the client returns with its resume token', async (t) => {
  const { gw, port } = await setup(t);
  const desk = await fixedPortConsole(t, port, (s) => s.pipe(s));
  const { ticket, resume } = await gw.ticket('alice', 'desk');
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${ticket}`);
  await opened(ws);
  ws.send(Buffer.from('ping'));
  await once(ws, 'message');
  const { ticket: t2 } = await gw.ticket('alice', 'desk');
  const tcp = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', t2)}\r\n\r\n`);
  t.match(tcp.head, /^HTTP\/1\.1 200/);
  const wsClosed = closeOf(ws);
  const tcpClosed = once(tcp.socket, 'close');
  const movedAt = Date.now();
  // The VM moves to "test" again under a new epoch with another owner in between: owner change.
  await setState(gw, 'running', { node: 'elsewhere', epoch: 1 });
  const closed = await wsClosed;
  t.equal(closed.code, 4001, 'WebSocket told to reroute (4001)');
  const reason = JSON.parse(closed.reason) as { retryMs: number };
  t.ok(reason.retryMs >= 0 && reason.retryMs <= 500, `with retryMs (${reason.retryMs})`);
  await tcpClosed;
  t.ok(Date.now() - movedAt < 1000, 'both told within 1 s of the directory change');
  await waitLog(gw, (l) => l.event === 'tunnels-rerouted' && l.vm === 'desk' && l.tunnels === 2);

  // Back on this node (a move back), reconnect with the resume token: no ticket, no login.
  await setState(gw, 'running', { node: 'test', epoch: 2 });
  const again = openWs(t, gw, `/tunnel/desk/vnc?resume=${encodeURIComponent(resume)}`);
  await once(again, 'open');
  again.send(Buffer.from('resumed'));
  const [msg] = (await once(again, 'message')) as [Buffer];
  t.equal(msg.toString(), 'resumed', 'the resume token opens a new tunnel to the same VM');
  const tls = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${resume}\r\n\r\n`, { ca: gw.caCert });
  t.match(tls.head, /^HTTP\/1\.1 200/, 'so does CONNECT inside TLS, with the token as Bearer');
  tls.socket.destroy();
  t.equal(desk.accepted(), 4, 'the console saw each tunnel once');
  const line = await waitLog(gw, (l) => l.event === 'tunnel' && l.via === 'resume');
  t.equal(line.user, 'alice', 'logged as alice, via resume');
  t.notMatch(gw.logText(), resume.slice(3, 40), 'the resume token never reaches the log');
});

t.test('resume token misuse is refused with the contract codes', async (t) => {
  const { gw, port } = await setup(t, { auth: { resumeTtlMs: 60_000 } });
  await fixedPortConsole(t, port, (s) => s.pipe(s));
  const { resume } = await gw.ticket('alice', 'desk');
  const cases: Array<[string, string, RegExp]> = [
    ['another user (Basic bob:<alice token>)', `Proxy-Authorization: ${basic('bob', resume)}`, /^HTTP\/1\.1 407/],
    ['in clear text', `Proxy-Authorization: Bearer ${resume}`, /^HTTP\/1\.1 403/],
  ];
  for (const [what, header, want] of cases) {
    const res = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\n${header}\r\n\r\n`, what === 'in clear text' ? {} : { ca: gw.caCert });
    t.match(res.head, want, what);
    res.socket.destroy();
  }
  const otherVm = openWs(t, gw, `/tunnel/other/vnc?resume=${encodeURIComponent(resume)}`);
  t.equal((await closeOf(otherVm)).code, 4401, 'another VM: 4401');
  const keys = gw.ctx.dir.keys();
  const expired = mintToken(keys, 'resume', { sub: 'alice', vm: 'desk' }, 1000, Date.now() - 5000).token;
  const exp = openWs(t, gw, `/tunnel/desk/vnc?resume=${encodeURIComponent(expired)}`);
  t.equal((await closeOf(exp)).code, 4401, 'expired: 4401');
  const forged = `${resume.slice(0, -4)}AAAA`;
  const bad = openWs(t, gw, `/tunnel/desk/vnc?resume=${encodeURIComponent(forged)}`);
  t.equal((await closeOf(bad)).code, 4401, 'forged: 4401');
  const session = mintToken(keys, 'session', { sub: 'alice' }, 60_000).token;
  const wrongKind = openWs(t, gw, `/tunnel/desk/vnc?resume=${encodeURIComponent(session)}`);
  t.equal((await closeOf(wrongKind)).code, 4401, 'a session token is not a resume token: 4401');
  const alice = gw.ctx.dir.getUser('alice')!;
  await gw.ctx.dir.putUser({ ...alice, sessionsNotBefore: Date.now() + 1 });
  const revoked = openWs(t, gw, `/tunnel/desk/vnc?resume=${encodeURIComponent(resume)}`);
  t.equal((await closeOf(revoked)).code, 4401, 'after "log out everywhere" (password change): 4401');
});

t.test('100 clients held through one failover: no MaxListenersExceededWarning, no listener left behind', async (t) => {
  const { gw, port } = await setup(t);
  const warnings: Error[] = [];
  const onWarning = (w: Error): void => void warnings.push(w);
  process.on('warning', onWarning);
  t.teardown(() => process.removeListener('warning', onWarning));
  const dir = gw.ctx.dir;
  const before = { change: dir.listenerCount('change'), resync: dir.listenerCount('resync') };
  await setState(gw, 'recovering', { epoch: 1 });
  const N = 100;
  const tickets = await Promise.all(Array.from({ length: N }, () => gw.ticket('alice', 'desk')));
  const clients = await Promise.all(
    tickets.map(async ({ ticket }) => {
      const s = net.connect(gw.port, '127.0.0.1');
      s.on('error', () => {});
      t.teardown(() => s.destroy());
      await once(s, 'connect');
      s.write(`CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`);
      return s;
    }),
  );
  await until(() => gw.ctx.broker.watcher.size === N);
  t.equal(gw.ctx.broker.watcher.size, N, `${N} clients held`);
  t.equal(dir.listenerCount('change'), before.change, 'holding added no directory listener');
  await fixedPortConsole(t, port, (c) => c.pipe(c));
  await setState(gw, 'running', { epoch: 1 });
  const answers = await Promise.all(clients.map((s) => readResponse(s)));
  t.same([...new Set(answers.map((a) => a.status))], [200], 'every held client carried through');
  t.equal(gw.ctx.broker.watcher.size, 0, 'no waiter left');
  t.same({ change: dir.listenerCount('change'), resync: dir.listenerCount('resync') }, before, 'the directory has the listeners it had before');
  // Warnings are emitted on the next tick; give them that tick before looking.
  await new Promise((r) => setImmediate(r));
  t.same(warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message), [], 'no MaxListenersExceededWarning');
  for (const s of clients) s.destroy();
});

function waitLog(gw: TestGateway, pred: (l: Record<string, unknown>) => boolean, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  const found = gw.logs.find(pred);
  if (found) return Promise.resolve(found);
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = (): void => {
      const l = gw.logs.find(pred);
      if (l) resolve(l);
      else if (Date.now() - started > timeoutMs) reject(new Error('log line not seen'));
      else setTimeout(check, 10);
    };
    check();
  });
}
