/**
 * A node with workers (config `workers: 2`; README "Workers"): a real `oneport serve` process,
 * its primary and two worker processes, real sockets. What must hold across workers, each checked
 * where the connection demonstrably landed on the other worker (the `worker` field of the log
 * lines, `oneport_worker_connections{worker}`):
 *
 * - connections are spread over the workers; /metrics sums them; the control socket lists and
 *   ends every worker's sessions;
 * - the directory (written through the control socket) is seen by every worker at once;
 * - a ticket is spent once per node, whichever worker redeems it;
 * - a VM's session cap, the per-address connection limit and the login budget are node-wide;
 * - a TLS session made on one worker resumes on the other (one ticket key);
 * - a parked `oneport.v1` session resumes through the other worker (relayed to its holder);
 * - an RD Gateway legacy pair whose IN request lands on the other worker pairs (relayed);
 * - a moved VM's tunnels are told to reconnect on every worker;
 * - a worker killed with SIGKILL is replaced; the other worker's tunnels go on;
 * - SIGTERM drains every worker, then the node exits 0.
 */
import t from 'tap';
import type * as Tap from 'tap';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { openAdmin } from '../../gateway/admin.js';
import { statePaths } from '../../gateway/state.js';
import { startBackend, rawRequest, echoRoundTrip, closedWithin, errorCode } from '../helpers/net.js';
import { clearConnect } from '../helpers/scenario.js';
import { deadline, eventually } from '../helpers/wait.js';
import { type Line, spawnServe } from '../helpers/serve.js';
import { RdgLegacyClient } from '../helpers/rdg.js';


const state = mkdtempSync(join(tmpdir(), 'oneport-workers-'));
t.teardown(() => rmSync(state, { recursive: true, force: true }));
const MAX_PER_ADDRESS = 12;
const LOGINS_PER_ADDRESS = 4;
writeFileSync(
  join(state, 'config.json'),
  JSON.stringify({
    listen: '127.0.0.1:0',
    state,
    nodeId: 'solo',
    workers: 2,
    demo: { enabled: false },
    log: { level: 'info', format: 'json' },
    tunnel: { protocolCheck: false },
    detect: { timeoutMs: 60_000 },
    limits: { maxConnectionsPerAddress: MAX_PER_ADDRESS, loginsPerAddressPerMinute: LOGINS_PER_ADDRESS },
    shutdown: { drainMs: 10_000, unreadyMs: 0 },
  }),
);
const { proc, lines, exited } = spawnServe(t, join(state, 'config.json'), state);

const controlSocket = statePaths(state).controlSocket;
const ca = (): string => readFileSync(join(state, 'ca.pem'), 'utf8');
const since = (n: number): Line[] => lines.slice(n);

/** A GET on the control socket: the API as the machine's administrator. */
function control(path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: controlSocket, path, method, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('control socket: no answer')));
    req.end();
  });
}

/** `oneport_worker_connections` by worker id, from /metrics. */
async function perWorker(): Promise<Map<string, number>> {
  const text = (await control('/metrics')).body;
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^oneport_worker_connections\{worker="(\d+)"\} (\d+)$/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

function metric(text: string, name: string, labels = ''): number {
  const re = new RegExp(`^${name}${labels ? `\\{${labels.replace(/[{}]/g, '')}\\}` : ''} (\\d+(?:\\.\\d+)?)$`, 'm');
  return Number(re.exec(text)?.[1] ?? 0);
}

/** The `worker` of the first log line after `from` that `pred` matches. */
async function workerOf(from: number, pred: (l: Line) => boolean, what: string): Promise<string> {
  const l = await eventually(() => since(from).find(pred), 20_000, what);
  return String(l.worker);
}

let port = 0;
let ticket: (user?: string, vm?: string) => Promise<string>;
let echo: Awaited<ReturnType<typeof startBackend>>;

t.before(async () => {
  const listening = await eventually(() => lines.find((l) => l.event === 'listening'), 60_000, 'listening');
  port = Number(listening.port);
  echo = await startBackend(t);
  const admin = await openAdmin(state);
  t.equal(admin.mode, 'running-gateway', 'the control socket answers (through a worker)');
  await admin.putUser('alice', { password: 'alice-password-1' });
  await admin.putVm({ name: 'desk', node: 'solo', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
  await admin.close();
  ticket = async (user = 'alice', vm = 'desk') => String((await (await openAdmin(state)).ticket(user, vm, 'vnc')).ticket);
});

t.test('two workers started; connections are spread over them and /metrics sums them', async (t) => {
  t.equal(lines.filter((l) => l.event === 'worker-started').length, 2, 'two workers');
  t.equal(lines.filter((l) => l.event === 'listening').length, 1, 'one port, bound once (by the primary)');
  const from = lines.length;
  const tunnels = [];
  for (let i = 0; i < 4; i++) {
    // The VM was written through the control socket (one worker): every worker sees it at once.
    const r = await rawRequest(port, clearConnect(await ticket()));
    t.equal(r.status, 200, `tunnel ${i + 1} opens`);
    t.same(await echoRoundTrip(r.socket, Buffer.from(`hi ${i}`)), Buffer.from(`hi ${i}`));
    tunnels.push(r.socket);
  }
  const counts = await perWorker();
  t.equal(counts.size, 2, 'two workers in /metrics');
  t.ok([...counts.values()].every((n) => n >= 2), `each worker holds tunnels (${JSON.stringify([...counts])})`);
  const text = (await control('/metrics')).body;
  t.equal(metric(text, 'oneport_tunnels_active', 'protocol="vnc",transport="connect"'), 4, '/metrics: the four open tunnels, summed over the workers');
  const ready = JSON.parse((await control('/readyz')).body) as { directory: { version: number } };
  t.equal(metric(text, 'oneport_directory_version'), ready.directory.version, '/metrics: the directory version, not its sum over the processes');
  t.equal(metric(text, 'oneport_directory_connected'), 1, '/metrics: directory connected (1, not a sum)');
  // The control socket answers for the whole node: every worker's sessions, and ends any of them.
  const list = JSON.parse((await control('/api/sessions')).body) as { sessions: Array<{ id: string }> };
  t.equal(list.sessions.length, 4, 'the session list has the four tunnels of both workers');
  t.equal(new Set(list.sessions.map((x) => x.id)).size, 4, 'with ids unique across workers');
  const closed = tunnels.map((s) => closedWithin(s, 15_000));
  for (const x of list.sessions) t.equal((await control(`/api/sessions/${encodeURIComponent(x.id)}`, 'DELETE')).status, 200, `session ${x.id} ended through the control socket`);
  await Promise.all(closed);
  await eventually(() => (since(from).filter((l) => l.event === 'tunnel').length >= 4 ? true : undefined), 20_000, 'tunnels closed');
  const workers = new Set(since(from).filter((l) => l.event === 'tunnel').map((l) => String(l.worker)));
  t.equal(workers.size, 2, `the tunnel log lines name both workers (${[...workers].join(', ')})`);
});

t.test('a ticket is spent once per node, whichever worker redeems it', async (t) => {
  const tk = await ticket();
  const from = lines.length;
  const first = await rawRequest(port, clearConnect(tk));
  t.equal(first.status, 200, 'first use');
  // The first tunnel keeps its worker busier: the next connection goes to the other one.
  const again = await rawRequest(port, clearConnect(tk), { localAddress: '127.0.0.2' });
  t.not(again.status, 200, `the same ticket from another address is refused (${again.status} ${errorCode(again.body.toString()) ?? ''})`);
  const refused = await workerOf(from, (l) => l.event === 'tunnel-refused' && l.client === '127.0.0.2', 'the refusal');
  first.socket.destroy();
  const closed = await workerOf(from, (l) => l.event === 'tunnel' && l.client === '127.0.0.1', 'the first tunnel closed');
  t.not(refused, closed, `the refusal came from the other worker (${refused}) than the first use (${closed})`);
});

t.test("a VM's session cap is node-wide", async (t) => {
  const admin = await openAdmin(state);
  await admin.putVm({ name: 'capped', node: 'solo', maxSessions: 1, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
  const from = lines.length;
  const first = await rawRequest(port, clearConnect(await ticket('alice', 'capped'), 'capped'));
  t.equal(first.status, 200, 'the first session opens');
  const second = await rawRequest(port, clearConnect(await ticket('alice', 'capped'), 'capped'));
  t.equal(errorCode(second.body.toString()), 'ONEPORT_ERR_SESSION_LIMIT', `a second session is refused (${second.status})`);
  const refused = await workerOf(from, (l) => l.event === 'tunnel-refused' && l.code === 'ONEPORT_ERR_SESSION_LIMIT', 'the refusal');
  first.socket.destroy();
  const closed = await workerOf(from, (l) => l.event === 'tunnel' && l.vm === 'capped', 'the first session closed');
  t.not(refused, closed, `by the other worker (${refused}) than the one holding the first (${closed})`);
  const third = await rawRequest(port, clearConnect(await ticket('alice', 'capped'), 'capped'));
  t.equal(third.status, 200, 'once the first ended, a new one opens');
  third.socket.destroy();
});

t.test('the per-address limit is node-wide', async (t) => {
  const sockets: net.Socket[] = [];
  for (let i = 0; i < MAX_PER_ADDRESS; i++) {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' });
    s.on('error', () => {});
    await once(s, 'connect');
    sockets.push(s);
  }
  // Held in detection (no byte sent) on both workers.
  const counts = await eventually(async () => {
    const c = await perWorker();
    return [...c.values()].reduce((a, b) => a + b, 0) >= MAX_PER_ADDRESS ? c : undefined;
  }, 10_000, 'all counted');
  t.ok([...counts.values()].every((n) => n >= 1), `the address's connections are on both workers (${JSON.stringify([...counts])})`);
  const extra = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' });
  extra.on('error', () => {});
  const closed = await closedWithin(extra, 10_000);
  t.ok(closed.elapsedMs < 10_000, 'one more from that address is refused at accept');
  const other = await rawRequest(port, clearConnect(await ticket()), { localAddress: '127.0.0.5' });
  t.equal(other.status, 200, 'another address is not');
  other.socket.destroy();
  for (const s of sockets) s.destroy();
  const text = (await control('/metrics')).body;
  t.ok(metric(text, 'oneport_connections_total', 'result="rejected-address-limit"') >= 1, 'counted as rejected-address-limit');
});

t.test('the login budget is node-wide', async (t) => {
  const statuses: number[] = [];
  for (let i = 0; i <= LOGINS_PER_ADDRESS; i++) {
    // A new connection each time: the attempts go to both workers.
    const body = JSON.stringify({ user: 'alice', password: `wrong-${i}` });
    const r = await rawRequest(port, `POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`, { ca: ca(), localAddress: '127.0.0.4' });
    statuses.push(r.status);
    r.socket.destroy();
  }
  t.same(statuses, [...Array(LOGINS_PER_ADDRESS).fill(401), 429], `${LOGINS_PER_ADDRESS} wrong passwords (spread over both workers), then 429 (${statuses.join(' ')})`);
});

t.test('a TLS session made on one worker resumes on the other', async (t) => {
  const first = tls.connect({ port, host: '127.0.0.1', ca: ca(), servername: 'localhost', minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
  first.on('error', () => {});
  const session = await new Promise<Buffer>((resolve) => first.once('session', resolve));
  // First held open: the next connection lands on the other worker.
  const before = await perWorker();
  const second = tls.connect({ port, host: '127.0.0.1', ca: ca(), servername: 'localhost', session, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
  second.on('error', () => {});
  await once(second, 'secureConnect');
  const during = await perWorker();
  t.ok(second.isSessionReused(), 'the session was resumed');
  const grew = [...during].filter(([w, n]) => n > (before.get(w) ?? 0)).map(([w]) => w);
  t.equal(grew.length, 1, `the second connection landed on one worker (${JSON.stringify([...before])} -> ${JSON.stringify([...during])})`);
  t.ok((before.get(grew[0]!) ?? 0) === 0, 'the one that did not hold the first');
  first.destroy();
  second.destroy();
});

t.test('a parked oneport.v1 session resumes through the other worker', async (t) => {
  const issued = await (await openAdmin(state)).ticket('alice', 'desk', 'vnc');
  const ws = new WebSocket(`wss://127.0.0.1:${port}/tunnel/desk/vnc?ticket=${String(issued.ticket)}`, ['oneport.v1'], { ca: ca() });
  ws.on('error', () => {});
  t.teardown(() => ws.terminate());
  const hello = await new Promise<{ session: string }>((resolve, reject) => {
    ws.on('message', function first(d: Buffer, isBinary: boolean) {
      if (isBinary) return;
      ws.removeListener('message', first);
      resolve(JSON.parse(d.toString()) as { session: string });
    });
    ws.once('close', (code: number) => reject(new Error(`closed ${code} before the hello`)));
  });
  t.ok(hello.session, 'a session');
  const from = lines.length;
  // Cut the leg as a network would: the session parks on its worker (and holds a count there, so
  // the next connection goes to the other worker).
  (ws as unknown as { _socket: net.Socket })._socket.destroy();
  await eventually(async () => ([...(await perWorker()).values()].reduce((a, b) => a + b, 0) === 1 ? true : undefined), 10_000, 'only the parked session counted');
  const back = new WebSocket(`wss://127.0.0.1:${port}/tunnel/desk/vnc?resume=${encodeURIComponent(String(issued.resume))}&session=${hello.session}&received=0`, ['oneport.v1'], { ca: ca() });
  back.on('error', () => {});
  t.teardown(() => back.terminate());
  const resumed = await Promise.race([
    new Promise<string>((resolve) => {
      back.on('message', (d: Buffer, isBinary: boolean) => {
        if (!isBinary && (JSON.parse(d.toString()) as { type?: string }).type === 'hello') resolve('hello');
      });
      back.once('close', (code: number, reason: Buffer) => resolve(`closed ${code} ${reason.toString()}`));
    }),
    deadline(15_000, 'the resumed hello'),
  ]);
  t.equal(resumed, 'hello', 'the session resumed');
  const echoed = new Promise<Buffer>((resolve) => back.on('message', (d: Buffer, isBinary: boolean) => isBinary && resolve(d)));
  back.send(Buffer.from('after the resume'), { binary: true });
  t.same(await Promise.race([echoed, deadline(10_000, 'echo')]), Buffer.from('after the resume'), 'bytes flow to the console and back');
  const relayedBy = await workerOf(from, (l) => l.event === 'session-relayed', 'session-relayed');
  const heldBy = await workerOf(from, (l) => l.event === 'session-resumed', 'session-resumed');
  t.not(relayedBy, heldBy, `the leg reached worker ${relayedBy}, which relayed it to worker ${heldBy}, the holder`);
  back.close(1000);
  await eventually(async () => ([...(await perWorker()).values()].reduce((a, b) => a + b, 0) === 0 ? true : undefined), 10_000, 'the session ended');
});

/** Two CONNECT tunnels, one on each worker (the second goes to the worker without one). */
async function tunnelOnEachWorker(t: Tap.Test): Promise<net.Socket[]> {
  const out: net.Socket[] = [];
  for (let i = 0; i < 2; i++) {
    const r = await rawRequest(port, clearConnect(await ticket()));
    t.equal(r.status, 200, `tunnel ${i + 1} opens`);
    out.push(r.socket);
  }
  const counts = await perWorker();
  t.same([...counts.values()], [1, 1], `one tunnel on each worker (${JSON.stringify([...counts])})`);
  return out;
}

t.test('an RD Gateway legacy pair whose two requests land on different workers', async (t) => {
  const admin = await openAdmin(state);
  await admin.putVm({ name: 'win', node: 'solo', endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: echo.port }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
  const from = lines.length;
  // The OUT request keeps its worker busier: the IN request goes to the other one.
  const c = await RdgLegacyClient.connect([port, port], ca());
  t.teardown(() => c.destroy());
  t.match(await c.open(String((await admin.ticket('alice', 'win', 'rdp')).ticket), 'win'), { type: 'channel-response', errorCode: 0 }, 'channel opened');
  const data = Buffer.alloc(100_000, 0x42);
  for (let at = 0; at < data.length; at += 0xffff) c.send({ type: 'data', data: data.subarray(at, at + 0xffff) });
  t.same(await c.readData(data.length), data, 'data both ways through the relayed IN request');
  const relayedBy = await workerOf(from, (l) => l.event === 'rdg-relayed', 'rdg-relayed');
  c.send({ type: 'close-channel', statusCode: 0 });
  await c.closed();
  const heldBy = await workerOf(from, (l) => l.event === 'tunnel' && l.vm === 'win', 'the tunnel line');
  t.not(relayedBy, heldBy, `worker ${relayedBy} relayed the IN request to worker ${heldBy}, which holds the OUT request and the tunnel`);
});

t.test("a moved VM's tunnels are told to reconnect on every worker", async (t) => {
  const tunnels = await tunnelOnEachWorker(t);
  const closed = tunnels.map((s) => closedWithin(s, 15_000));
  const from = lines.length;
  const admin = await openAdmin(state);
  await admin.putVm({ name: 'desk', node: 'elsewhere', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
  await Promise.all(closed);
  t.pass('both tunnels were closed');
  const rerouted = await eventually(() => {
    const ls = since(from).filter((l) => l.event === 'tunnels-rerouted');
    return ls.length >= 2 ? ls : undefined;
  }, 15_000, 'two reroutes');
  t.equal(new Set(rerouted.map((l) => String(l.worker))).size, 2, 'each worker rerouted its own');
  await admin.putVm({ name: 'desk', node: 'solo', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
});

t.test("a worker that dies is replaced; the other worker's tunnels go on", async (t) => {
  const tunnels = await tunnelOnEachWorker(t);
  const started = lines.filter((l) => l.event === 'worker-started');
  const victim = started[started.length - 1]!;
  const fates = tunnels.map((s) => closedWithin(s, 20_000).then(() => 'closed', () => 'open'));
  process.kill(Number(victim.pid), 'SIGKILL');
  await eventually(() => lines.find((l) => l.event === 'worker-died' && String(l.worker) === String(victim.worker)), 20_000, 'worker-died');
  // The survivor's tunnel still carries bytes; the victim's is gone.
  const alive: net.Socket[] = [];
  for (const s of tunnels) {
    const r = await echoRoundTrip(s, Buffer.from('still here'), 5000).then(() => true, () => false);
    if (r) alive.push(s);
  }
  t.equal(alive.length, 1, "the other worker's tunnel still relays");
  await eventually(() => (lines.filter((l) => l.event === 'worker-started').length > started.length ? true : undefined), 60_000, 'a replacement worker');
  const counts = await eventually(async () => {
    const c = await perWorker();
    return c.size === 2 ? c : undefined;
  }, 20_000, 'two workers again');
  t.notOk(counts.has(String(victim.worker)), `the dead worker's counts are gone (${JSON.stringify([...counts])})`);
  const again = await rawRequest(port, clearConnect(await ticket()));
  t.equal(again.status, 200, 'new tunnels open');
  again.socket.destroy();
  for (const s of tunnels) s.destroy();
  await Promise.all(fates);
});

t.test('SIGTERM drains every worker, then the node exits 0', async (t) => {
  await eventually(async () => ((await perWorker()).size === 2 && [...(await perWorker()).values()].every((n) => n === 0) ? true : undefined), 20_000, 'idle');
  const tunnels = await tunnelOnEachWorker(t);
  const closed = tunnels.map((s) => closedWithin(s, 20_000));
  const from = lines.length;
  proc.kill('SIGTERM');
  await Promise.all(closed);
  t.pass('every tunnel was closed by the drain');
  t.equal(await Promise.race([exited, deadline(30_000, 'exit')]), 0, 'the node exits 0');
  const drained = new Set(since(from).filter((l) => l.event === 'drain-started' && typeof l.worker === 'number').map((l) => l.worker));
  t.equal(drained.size, 2, 'both workers drained');
  t.ok(since(from).some((l) => l.event === 'stopped' && l.worker === 'primary'), 'then the primary stopped');
});
