/**
 * The tunnel layer alone: the replay buffer, the directory watcher and holding (a directory in
 * memory, a Reach that fails on demand), the broker (a fake Reach and a recording leg, the real
 * authenticator), and each client leg on real loopback sockets.
 */
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { ReplayBuffer } from '../../gateway/tunnel/replay-buffer.js';
import { until } from '../helpers/wait.js';
import { VmWatcher } from '../../gateway/tunnel/watcher.js';
import { reachHeld } from '../../gateway/tunnel/hold.js';
import { ReachFailure, type FailureCode } from '../../gateway/tunnel/failures.js';
import { NO_PREFACE, type Reach, type ReachedConsole } from '../../gateway/tunnel/reach.js';
import { openTunnel, type BrokerDeps } from '../../gateway/tunnel/broker.js';
import type { ClientLeg } from '../../gateway/tunnel/legs/leg.js';
import { StreamLeg } from '../../gateway/tunnel/legs/stream.js';
import { WebSocketLeg } from '../../gateway/tunnel/legs/websocket.js';
import { StreamPump, type Pump } from '../../gateway/tunnel/pump.js';
import { TunnelRegistry } from '../../gateway/tunnel/registry.js';
import { SessionRegistry } from '../../gateway/tunnel/session-registry.js';
import type { ResumableSession } from '../../gateway/tunnel/session.js';
import { SessionCaps } from '../../gateway/tunnel/session-caps.js';
import type { TunnelTarget } from '../../gateway/tunnel/request.js';
import { MemoryDirectory } from '../../gateway/directory/memory.js';
import { toVmRecord, vmSchema, type VmRecord } from '../../gateway/directory/directory.js';
import { MemoryAuthStore } from '../../gateway/auth/store.js';
import { Authenticator } from '../../gateway/auth/authenticator.js';
import { Metrics } from '../../gateway/metrics.js';
import { buildConfig } from '../../gateway/config.js';
import { RateLimitedLog, type Logger } from '../../gateway/log.js';
import type { OneportError } from '../../gateway/errors.js';
import type { AuditRecord } from '../../gateway/audit.js';

function memoryLog(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink) as Logger, lines };
}

/** tap matches thrown errors against an object pattern; its types only know Error's own fields. */
const like = (pattern: Record<string, unknown>): Error => pattern as unknown as Error;

function vm(name: string, extra: Partial<VmRecord> = {}): VmRecord {
  return { ...toVmRecord(vmSchema.parse({ name, node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }], users: ['alice'] })), ...extra };
}

// -------------------------------------------------------------------------------------------
// Replay buffer

t.test('replay buffer: absolute offsets through append, ack and replay', async (t) => {
  const b = new ReplayBuffer();
  t.same([b.acked, b.end, b.size], [0, 0, 0], 'empty');
  b.append(Buffer.from('hello'));
  b.append(Buffer.from(' world'));
  t.same([b.acked, b.end, b.size], [0, 11, 11]);
  t.equal(Buffer.concat(b.since(0)).toString(), 'hello world', 'replay from the start');
  t.equal(Buffer.concat(b.since(3)).toString(), 'lo world', 'replay from inside a chunk');
  t.equal(Buffer.concat(b.since(11)).toString(), '', 'nothing to replay at the end');
  t.ok(b.ackTo(7), 'ack inside the second chunk');
  t.same([b.acked, b.end, b.size], [7, 11, 4]);
  t.equal(Buffer.concat(b.since(7)).toString(), 'orld');
  t.notOk(b.canReplayFrom(6), 'acknowledged bytes are gone');
  t.same(b.since(6), [], 'and cannot be replayed');
  t.notOk(b.canReplayFrom(12), 'nor bytes never sent');
  t.notOk(b.ackTo(5), 'an ack behind the last one changes nothing');
  t.notOk(b.ackTo(12), 'an ack past what was sent changes nothing');
  t.notOk(b.ackTo(Number.NaN), 'nor a junk offset');
  t.same([b.acked, b.size], [7, 4]);
  t.ok(b.ackTo(11), 'ack everything');
  t.same([b.acked, b.end, b.size], [11, 11, 0]);
  b.append(Buffer.alloc(0));
  t.equal(b.end, 11, 'empty chunks change nothing');
});

// -------------------------------------------------------------------------------------------
// Watcher and holding

t.test('watcher: one listener for any number of waiters; woken by their VM, a resync, the deadline or abort', async (t) => {
  const dir = new MemoryDirectory();
  const before = { change: dir.listenerCount('change'), resync: dir.listenerCount('resync') };
  const w = new VmWatcher(dir);
  const held = Array.from({ length: 200 }, () => w.next('desk', 60_000));
  t.equal(w.size, 200);
  t.equal(dir.listenerCount('change'), before.change + 1, 'one change listener for 200 waiters');
  t.equal(dir.listenerCount('resync'), before.resync + 1, 'one resync listener');
  const other = w.next('other', 60_000);
  dir.emit('change', { kind: 'vm', name: 'desk' });
  await Promise.all(held);
  t.equal(w.size, 1, 'only the waiters of that VM woke');
  dir.emit('resync');
  await other;
  t.equal(w.size, 0, 'a resync wakes everyone');
  const started = Date.now();
  await w.next('desk', 20);
  t.ok(Date.now() - started >= 15, 'the deadline wakes a waiter');
  const ac = new AbortController();
  const aborted = w.next('desk', 60_000, ac.signal);
  ac.abort();
  await aborted;
  t.equal(w.size, 0, 'abort wakes and forgets it');
  w.close();
  t.equal(dir.listenerCount('change'), before.change, 'close removes the listener');
});

/** A Reach that fails with the given codes, in turn, then connects to `port`. */
function scriptedReach(failures: FailureCode[], port: number, opts: { remote?: boolean; moving?: (v: VmRecord) => boolean } = {}): Reach & { calls: number } {
  const r = {
    calls: 0,
    async reach(): Promise<ReachedConsole> {
      r.calls++;
      const f = failures.shift();
      if (f) throw new ReachFailure(f);
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      return { socket, preface: NO_PREFACE };
    },
    changingHands: (v: VmRecord) => opts.moving?.(v) ?? (v.state === 'recovering' || v.state === 'migrating'),
    remote: () => opts.remote ?? false,
    endJudge: () => undefined,
  };
  return r;
}

async function echoServer(t: { teardown(f: () => unknown): void }): Promise<number> {
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as net.AddressInfo).port;
}

function target(v: VmRecord): TunnelTarget {
  return { vm: v, endpoint: v.endpoints[0]!, user: { name: 'alice', passwordHash: '', roles: ['user'], groups: [], sessionsNotBefore: 0 }, sessionId: 's', via: 'ticket' };
}

t.test('holding: a refused console on a running VM fails at once; a VM changing hands holds until its change', async (t) => {
  const port = await echoServer(t);
  const dir = new MemoryDirectory();
  const watcher = new VmWatcher(dir);
  t.teardown(() => watcher.close());
  const { log, lines } = memoryLog();
  await dir.putVm(vm('desk'));

  const refusing = scriptedReach(['DIAL_REFUSED'], port);
  const started = Date.now();
  await t.rejects(reachHeld({ dir, reach: refusing, watcher, log, holdMs: 10_000 }, target(vm('desk')), new AbortController().signal), like({ failure: 'DIAL_REFUSED', status: 502 }));
  t.ok(Date.now() - started < 1000, 'not held: nothing is going to change');
  t.equal(refusing.calls, 1);

  const remoteRefusing = scriptedReach(['DIAL_REFUSED'], port, { remote: true });
  await t.rejects(reachHeld({ dir, reach: remoteRefusing, watcher, log, holdMs: 10_000 }, target(vm('desk')), new AbortController().signal), like({ failure: 'DIAL_REFUSED' }), 'a console on another node that refuses: its host is alive, not held either');

  const ownerSilent = scriptedReach(['OWNER_SILENT'], port);
  const held = reachHeld({ dir, reach: ownerSilent, watcher, log, holdMs: 10_000, backoff: { baseMs: 60_000, capMs: 60_000 } }, target(vm('desk')), new AbortController().signal);
  await t.resolves(until(() => watcher.size === 1, { timeoutMs: 5000 }), 'an owner that does not answer: held');
  await dir.putVm(vm('desk', { node: 'n2', epoch: 2 }));
  const { console: reached, target: now } = await held;
  reached.socket.destroy();
  t.equal(now.vm.node, 'n2', 'woken by the directory change, reaches the VM where it is now');
  t.ok(lines.some((l) => l.event === 'tunnel-hold') && lines.some((l) => l.event === 'tunnel-held'), 'hold and release are logged');

  await dir.putVm(vm('desk', { state: 'recovering' }));
  const never = scriptedReach([], port);
  await t.rejects(reachHeld({ dir, reach: never, watcher, log, holdMs: 50 }, target(vm('desk')), new AbortController().signal), like({ code: 'ONEPORT_ERR_VM_RECOVERING', status: 503 }), 'a VM that does not come back within the hold: 503');
  t.equal(never.calls, 0, 'a recovering VM is not dialled');
  await dir.putVm(vm('desk', { state: 'down' }));
  await t.rejects(reachHeld({ dir, reach: never, watcher, log, holdMs: 1000 }, target(vm('desk')), new AbortController().signal), like({ code: 'ONEPORT_ERR_VM_DOWN' }), 'a down VM: 503 at once');
});


// -------------------------------------------------------------------------------------------
// Broker

/** A leg that records what the broker told it. */
function recordingLeg(client?: net.Socket): ClientLeg & { refused: OneportError[]; attached: number; abort: AbortController } {
  const abort = new AbortController();
  const leg = {
    transport: 'connect' as const,
    client: '127.0.0.1',
    acceptedAt: process.hrtime.bigint(),
    gone: abort.signal,
    abort,
    refused: [] as OneportError[],
    attached: 0,
    attach(console: ReachedConsole): Pump {
      leg.attached++;
      if (!client) throw new Error('this leg has no client socket');
      return new StreamPump(client, console.socket, { idleTimeoutMs: 0 });
    },
    refuse(err: OneportError) {
      leg.refused.push(err);
    },
  };
  return leg;
}

async function brokerScene(t: { teardown(f: () => unknown): void }, reach: Reach): Promise<{ deps: BrokerDeps; dir: MemoryDirectory; auth: Authenticator; lines: Array<Record<string, unknown>>; audits: AuditRecord[] }> {
  const dir = new MemoryDirectory();
  const store = new MemoryAuthStore();
  t.teardown(() => store.close());
  const metrics = new Metrics();
  const config = buildConfig({});
  const auth = new Authenticator(dir, store, { ...config.auth, ...config.limits }, metrics);
  const { log, lines } = memoryLog();
  const watcher = new VmWatcher(dir);
  t.teardown(() => watcher.close());
  await dir.putUser({ name: 'alice', passwordHash: 'x', roles: ['user'], groups: [], sessionsNotBefore: 0 });
  await dir.putVm(vm('desk'));
  const noisyLog = new RateLimitedLog();
  const audits: AuditRecord[] = [];
  const caps = new SessionCaps({ dir, defaults: { maxSessionsPerUser: 0, maxSessionsPerVm: 0 }, metrics, log, noisyLog });
  // The echo console is no VNC server: the protocol check (console-handshake.ts) has its own tests.
  const deps: BrokerDeps = { dir, auth, reach, watcher, tunnels: new TunnelRegistry(), metrics, log, noisyLog, lifecycle: { shuttingDown: false }, nodeId: undefined, holdMs: 1000, policy: { idleTimeoutMs: 0, maxSessionMs: 0 }, caps, audit: { record: (r) => audits.push(r) }, self: 'local', handshake: { timeoutMs: 5000, protocolCheck: false } };
  return { deps, dir, auth, lines, audits };
}

t.test('broker: authorize, reach, attach, register and one log line; refusals go through the leg', async (t) => {
  const port = await echoServer(t);
  const reach = scriptedReach([], port);
  const { deps, dir, auth, lines, audits } = await brokerScene(t, reach);
  const issued = await auth.issueTicket(dir.getUser('alice')!, dir.getVm('desk')!, 'vnc');

  // A client socket pair over loopback stands in for the CONNECT client.
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const clientSide = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [gatewaySide] = (await once(server, 'connection')) as [net.Socket];
  const leg = recordingLeg(gatewaySide);
  const request = { vmName: 'desk', credential: { kind: 'ticket' as const, ticket: issued.ticket }, hints: { protocol: 'vnc' as const }, tls: true, client: '127.0.0.1', hold: true };
  const tunnel = await openTunnel(deps, request, leg);
  t.ok(tunnel, 'a tunnel');
  t.equal(leg.attached, 1);
  t.same(leg.refused, []);
  t.equal(deps.tunnels.size, 1, 'registered');
  clientSide.write('ping');
  const [echoed] = (await once(clientSide, 'data')) as [Buffer];
  t.equal(echoed.toString(), 'ping', 'bytes flow through the attached pump');
  t.same([tunnel!.pump.bytesToConsole, tunnel!.pump.bytesToClient], [4, 4], 'byte counts are readable while the tunnel runs');
  t.match(tunnel!.id, /^local:\d+$/, 'tunnel ids are <node>:<n>');
  t.equal(deps.tunnels.get(tunnel!.id), tunnel, 'and find the tunnel');
  clientSide.end();
  await tunnel!.pump.done;
  await until(() => lines.some((l) => l.event === 'tunnel'), { timeoutMs: 5000 });
  t.equal(deps.tunnels.size, 0, 'forgotten when it ends');
  t.equal(deps.caps.size, 0, 'its session slot given back');
  t.match(lines.find((l) => l.event === 'tunnel'), { vm: 'desk', via: 'ticket', bytesToConsole: 4, bytesToClient: 4 });
  t.match(audits, [{ kind: 'session', id: tunnel!.id, user: 'alice', vm: 'desk', protocol: 'vnc', client: '127.0.0.1', entryNode: 'local', consoleNode: 'n1', bytesToConsole: 4, bytesToClient: 4, closeReason: 'client-closed' }], 'one audit record for the session');

  const again = recordingLeg();
  t.equal(await openTunnel(deps, { ...request, client: '127.0.0.2' }, again), undefined, 'the spent ticket, from another address: refused');
  t.equal(again.refused[0]?.code, 'ONEPORT_ERR_TICKET_INVALID');
  t.equal(again.attached, 0);
  t.equal(reach.calls, 1, 'and the console was not reached for it');

  const junk = recordingLeg();
  await openTunnel(deps, { ...request, vmName: 'nope', credential: { kind: 'ticket', ticket: 'a'.repeat(50) } }, junk);
  const junkKnown = recordingLeg();
  await openTunnel(deps, { ...request, hints: { protocol: 'spice' }, credential: { kind: 'ticket', ticket: 'a'.repeat(50) } }, junkKnown);
  t.same([junk.refused[0]?.status, junkKnown.refused[0]?.status], [401, 401], 'a junk ticket gets the same answer for an unknown VM and for a protocol a known VM lacks');
  t.ok(lines.filter((l) => l.event === 'tunnel-refused').length >= 3, 'each refusal logged');
  const refusals = (await deps.metrics.tunnels.get()).values.filter((v) => v.labels.result === 'ONEPORT_ERR_TICKET_INVALID').reduce((a, v) => a + v.value, 0);
  t.equal(refusals, 3, 'and counted');
});

t.test('broker: a leg that cannot take the console gets the console closed; shutting down refuses', async (t) => {
  const port = await echoServer(t);
  const reach = scriptedReach([], port);
  const { deps, dir, auth } = await brokerScene(t, reach);
  const issued = await auth.issueTicket(dir.getUser('alice')!, dir.getVm('desk')!, 'vnc');
  let consoleSocket: ReachedConsole['socket'] | undefined;
  const leg = recordingLeg();
  leg.attach = (c: ReachedConsole): Pump => {
    consoleSocket = c.socket;
    throw new ReachFailure('CLIENT_GONE');
  };
  await openTunnel(deps, { vmName: 'desk', credential: { kind: 'ticket', ticket: issued.ticket }, hints: {}, tls: true, client: '127.0.0.1', hold: true }, leg);
  t.ok(consoleSocket?.destroyed, 'the console socket is closed');
  t.equal(leg.refused[0]?.code, 'ONEPORT_ERR_CONSOLE_UNREACHABLE');
  t.equal(deps.tunnels.size, 0);
  t.equal(deps.caps.size, 0, 'and its session slot given back');

  const down = recordingLeg();
  await openTunnel({ ...deps, lifecycle: { shuttingDown: true } }, { vmName: 'desk', credential: { kind: 'ticket', ticket: issued.ticket }, hints: {}, tls: true, client: '127.0.0.1', hold: true }, down);
  t.equal(down.refused[0]?.code, 'ONEPORT_ERR_SHUTTING_DOWN');
});

// -------------------------------------------------------------------------------------------
// Legs

t.test('stream leg: 200 then raw bytes; a refusal is a complete proxy answer; the hop names its code', async (t) => {
  const port = await echoServer(t);
  // Half-open like the gateway's own sockets: the client's FIN must not end our side at once.
  const server = net.createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const sp = (server.address() as net.AddressInfo).port;
  const pair = async (): Promise<[net.Socket, net.Socket]> => {
    const c = net.connect(sp, '127.0.0.1');
    c.on('error', () => undefined);
    const [s] = (await once(server, 'connection')) as [net.Socket];
    // The gateway's listener gives every socket an error listener first thing.
    s.on('error', () => undefined);
    return [c, s];
  };
  const read = (s: net.Socket): Promise<string> =>
    new Promise((resolve) => {
      let text = '';
      s.on('data', (d: Buffer) => (text += d.toString()));
      s.on('close', () => resolve(text));
    });

  const [c1, s1] = await pair();
  const leg = new StreamLeg(s1, { transport: 'connect-tls', client: 'x', acceptedAt: 0n, head: Buffer.from('early') });
  const console1 = net.connect(port, '127.0.0.1');
  await once(console1, 'connect');
  const got = read(c1);
  const pump = leg.attach({ socket: console1, preface: NO_PREFACE }, undefined, { idleTimeoutMs: 0 });
  c1.end('late');
  const r = await pump.done;
  t.equal(await got, 'HTTP/1.1 200 Connection established\r\n\r\nearlylate', '200, then the early bytes and the rest echoed');
  t.same([r.bytesToConsole, r.bytesToClient], [9, 9]);

  const [c2, s2] = await pair();
  const refused = read(c2);
  const { OneportError } = await import('../../gateway/errors.js');
  new StreamLeg(s2, { transport: 'connect', client: 'x', acceptedAt: 0n, head: Buffer.alloc(0) }).refuse(new OneportError('ONEPORT_ERR_TICKET_INVALID'));
  t.match(await refused, /^HTTP\/1\.1 407 [^\r]*\r\n(.*\r\n)*Proxy-Authenticate: Basic realm="oneport"\r\n/, '401 becomes 407 with Proxy-Authenticate');

  const [c3, s3] = await pair();
  const hopRefused = read(c3);
  new StreamLeg(s3, { transport: 'hop', client: 'x', acceptedAt: 0n, head: Buffer.alloc(0), hop: { from: 'n2' } }).refuse(new OneportError('ONEPORT_ERR_VM_DOWN'));
  t.match(await hopRefused, /^HTTP\/1\.1 503 [^\r]*\r\n(.*\r\n)*Oneport-Error: ONEPORT_ERR_VM_DOWN\r\n/, 'a hop refusal names its code for the sending node');

  const [c4, s4] = await pair();
  const goneLeg = new StreamLeg(s4, { transport: 'connect', client: 'x', acceptedAt: 0n, head: Buffer.alloc(0) });
  c4.resetAndDestroy();
  await once(goneLeg.gone, 'abort');
  t.ok(goneLeg.gone.aborted, 'the client leaving aborts the leg\'s signal');
  const console4 = net.connect(port, '127.0.0.1');
  await once(console4, 'connect');
  t.throws(() => goneLeg.attach({ socket: console4, preface: NO_PREFACE }, undefined, { idleTimeoutMs: 0 }), like({ failure: 'CLIENT_GONE' }), 'and it will not attach');
  console4.destroy();
});

t.test('websocket leg: early messages kept up to a bound, close codes for refusals, keep-alive stops with the socket', async (t) => {
  const port = await echoServer(t);
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(wss, 'listening');
  t.teardown(() => new Promise<void>((r) => wss.close(() => r())));
  const url = `ws://127.0.0.1:${(wss.address() as net.AddressInfo).port}/`;
  const legOpts = { client: 'x', acceptedAt: 0n, pingIntervalMs: 50, rerouteRetryMs: 100, preConnectBufferBytes: 8, resume: { sessions: new SessionRegistry<ResumableSession>(), graceMs: 1000, maxBufferBytes: 1 << 20 } };
  const open = async (): Promise<[WebSocket, WebSocket]> => {
    const c = new WebSocket(url);
    const [s] = (await once(wss, 'connection')) as [WebSocket];
    await once(c, 'open');
    return [c, s];
  };

  const [c1, s1] = await open();
  const leg = new WebSocketLeg(s1, legOpts);
  const firstMessage = once(s1, 'message');
  c1.send(Buffer.from('early'));
  await firstMessage;
  const console1 = net.connect(port, '127.0.0.1');
  await once(console1, 'connect');
  const echoed = once(c1, 'message');
  const pump = leg.attach({ socket: console1, preface: NO_PREFACE }, target(vm('desk')), { idleTimeoutMs: 0 });
  t.equal(((await echoed)[0] as Buffer).toString(), 'early', 'a message sent before the console answered reaches it');
  const pings = { n: 0 };
  c1.on('ping', () => pings.n++);
  await until(() => pings.n >= 2, { timeoutMs: 5000 });
  t.ok(pings.n >= 2, 'the client is pinged');
  c1.close(1000);
  await pump.done;
  const seen = pings.n;
  await new Promise((r) => setTimeout(r, 150));
  t.equal(pings.n, seen, 'no ping after the socket closed');

  const [c2, s2] = await open();
  const leg2 = new WebSocketLeg(s2, legOpts);
  const bigMessage = once(s2, 'message');
  c2.send(Buffer.alloc(64));
  await bigMessage;
  const console2 = net.connect(port, '127.0.0.1');
  await once(console2, 'connect');
  t.throws(() => leg2.attach({ socket: console2, preface: NO_PREFACE }, target(vm('desk')), { idleTimeoutMs: 0 }), like({ code: 'ONEPORT_ERR_PAYLOAD_TOO_LARGE' }), 'more early data than the bound: refused');
  console2.destroy();
  const { OneportError } = await import('../../gateway/errors.js');
  const closed = once(c2, 'close');
  leg2.refuse(new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE'));
  const [code, reason] = (await closed) as [number, Buffer];
  t.same([code, reason.toString()], [1009, 'ONEPORT_ERR_PAYLOAD_TOO_LARGE'], 'the refusal is the error\'s close code');

  const [c3, s3] = await open();
  const leg3 = new WebSocketLeg(s3, legOpts);
  const closed3 = once(c3, 'close');
  leg3.refuse(new OneportError('ONEPORT_ERR_VM_RECOVERING', undefined, { retryAfter: 5 }));
  const [code3, reason3] = (await closed3) as [number, Buffer];
  t.equal(code3, 4503);
  t.same(JSON.parse(reason3.toString()), { code: 'ONEPORT_ERR_VM_RECOVERING', retryMs: 5000 }, 'with the retry hint');
});

// -------------------------------------------------------------------------------------------
// Revocation

t.test('revocation follows the directory, but not a directory that lost its data (version 0)', async (t) => {
  const { EventEmitter } = await import('node:events');
  const { followRevocations } = await import('../../gateway/tunnel/revoke.js');
  const { log, lines } = memoryLog();
  // A directory that can go back to version 0, as a Redis mirror does when Redis restarts empty
  // with `reseed: false`.
  const users = new Map([['alice', { name: 'alice', passwordHash: 'x', roles: ['user'] as const, groups: [], sessionsNotBefore: 0 }]]);
  const vms = new Map([['desk', vm('desk')]]);
  let version = 5;
  const dir = Object.assign(new EventEmitter(), {
    getUser: (n: string) => users.get(n),
    getVm: (n: string) => vms.get(n),
    version: () => version,
  }) as unknown as MemoryDirectory;
  const tunnels = new TunnelRegistry('n1');
  const closed: string[] = [];
  const tunnel = (id: number) => ({
    id: `n1:${id}`,
    vm: 'desk',
    protocol: 'vnc' as const,
    transport: 'connect' as const,
    user: 'alice',
    sessionId: `s${id}`,
    client: '127.0.0.1',
    startedAt: Date.now() - 1000,
    node: 'n1',
    epoch: 1,
    pump: { close: (reason: string) => void closed.push(`${id}:${reason}`) } as unknown as Pump,
  });
  tunnels.add(tunnel(1) as never);
  const stop = followRevocations({ dir, tunnels, metrics: new Metrics(), log });
  t.teardown(stop);
  users.clear();
  vms.clear();
  version = 0;
  dir.emit('change', { kind: 'user', name: 'alice' });
  dir.emit('resync');
  t.same(closed, [], 'an emptied directory (version 0) ends nothing');
  version = 6;
  dir.emit('change', { kind: 'user', name: 'alice' });
  t.same(closed, ['1:revoked'], 'a real deletion (version moved on) ends the tunnel');
  t.ok(lines.some((l) => l.event === 'tunnels-revoked' && l.reason === 'user-deleted'));
});

t.test('the tunnel registry finds a VM\'s and a user\'s tunnels by index, kept through adds and deletes', async (t) => {
  const tunnels = new TunnelRegistry('n1');
  const tunnel = (id: number, vm: string, user: string) => ({ id: `n1:${id}`, vm, user, transport: 'connect' }) as unknown as Parameters<TunnelRegistry['add']>[0];
  const a = tunnel(1, 'desk', 'alice');
  const b = tunnel(2, 'desk', 'bob');
  const c = tunnel(3, 'lab', 'alice');
  for (const x of [a, b, c]) tunnels.add(x);
  const ids = (xs: readonly { id: string }[]): string[] => xs.map((x) => x.id).sort();
  t.same(ids(tunnels.byVm('desk')), ['n1:1', 'n1:2']);
  t.same(ids(tunnels.byUser('alice')), ['n1:1', 'n1:3']);
  t.same([...tunnels.vms()].sort(), ['desk', 'lab']);
  tunnels.delete(a);
  tunnels.delete(a);
  t.same(ids(tunnels.byVm('desk')), ['n1:2']);
  t.same(ids(tunnels.byUser('alice')), ['n1:3']);
  tunnels.delete(c);
  t.same(tunnels.byUser('alice'), [], 'no key left behind');
  t.same([...tunnels.vms()], ['desk']);
  t.equal(tunnels.size, 1);
});
