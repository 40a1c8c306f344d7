/**
 * Native RDP on the one port against a real gateway over raw sockets (README "Native RDP"): two
 * stand-in RDP consoles, one per VM, each answering a Connection Request with the Connection
 * Confirm freerdp-shadow-cli sent; openings built from FreeRDP 2.11's captured bytes with a real
 * ticket in the preconnection blob or the routing token.
 *
 * A good ticket reaches the console its VM names, and the console gets the request without it.
 * Everything else (forged, expired, replayed, cross-VM, cross-protocol tickets; no ticket; a VM
 * with native RDP off; FreeRDP's downgrading retries; malformed, huge, trickled and silent
 * openings) is answered with an RDP_NEG_FAILURE or closed at once, and no console ever sees a
 * connection for it. Last, the portal's .rdp files (gateway and native variants) and their tickets.
 */
import t, { type Test } from 'tap';
import type net from 'node:net';
import { once } from 'node:events';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { closedWithin, connectRaw, rawRequest } from '../helpers/net.js';
import { type RdpConsole, opening, startRdpConsole } from '../helpers/rdp.js';
import { apiClient, ok } from '../helpers/api.js';
import { connectionCount, forge } from '../helpers/scenario.js';
import { until } from '../helpers/wait.js';
import * as R from '../fixtures/rdp-packets.js';
import { encodeConnectionRequest, encodePreconnectionPdu, parseConnectionRequest } from '../../protocols/rdp.js';
import { REFUSAL } from '../../gateway/tunnel/legs/rdp.js';
import { checkTicket, mintTicket } from '../../gateway/auth/tickets.js';
import type { ConfigInput } from '../../gateway/config.js';

async function setup(t: Test, config: ConfigInput = {}): Promise<{ gw: TestGateway; win1: RdpConsole; win2: RdpConsole }> {
  const gw = await startTestGateway(t, config);
  const win1 = await startRdpConsole(t);
  const win2 = await startRdpConsole(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win1', [{ protocol: 'rdp', host: '127.0.0.1', port: win1.port }, { protocol: 'vnc', host: '127.0.0.1', port: win1.port }], ['alice']);
  await gw.addVm('win2', [{ protocol: 'rdp', host: '127.0.0.1', port: win2.port }], ['alice']);
  return { gw, win1, win2 };
}

/** Send an opening; resolve with what came back until the gateway closed, or the first answer if it stayed open. */
async function send(port: number, bytes: Buffer | Buffer[], opts: { localAddress?: string } = {}): Promise<net.Socket> {
  const s = await connectRaw(port, opts);
  for (const b of Array.isArray(bytes) ? bytes : [bytes]) s.write(b);
  return s;
}

async function refusedAtOnce(t: Test, port: number, bytes: Buffer | Buffer[], what: string, opts: { localAddress?: string; answer?: Buffer } = {}): Promise<void> {
  const s = await send(port, bytes, opts);
  const { data, elapsedMs } = await closedWithin(s, 3000);
  t.same(data, opts.answer ?? REFUSAL, `${what}: ${opts.answer?.length === 0 ? 'closed without an answer' : 'RDP_NEG_FAILURE'}`);
  t.ok(elapsedMs < 1500, `${what}: at once (${elapsedMs} ms)`);
}

async function tunnelCount(gw: TestGateway, labels: Record<string, string>): Promise<number> {
  const m = await gw.ctx.metrics.tunnels.get();
  return m.values.filter((v) => Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x)).reduce((a, v) => a + v.value, 0);
}

t.test('a ticket in the preconnection blob or the routing token reaches its own VM, on the same port, without the ticket', async (t) => {
  const { gw, win1, win2 } = await setup(t);
  const cases: Array<[string, keyof typeof opening, string, RdpConsole]> = [
    ['/pcb: to win1', 'pcb', 'win1', win1],
    ['/load-balance-info: to win2', 'loadBalanceInfo', 'win2', win2],
    ['Cookie: msts= to win1', 'msts', 'win1', win1],
  ];
  for (const [name, carrier, vm, console] of cases) {
    const { ticket } = await gw.ticket('alice', vm, 'rdp');
    const before = console.requests.length;
    const s = await send(gw.port, opening[carrier](`${ticket}.${vm}`));
    const [answer] = (await once(s, 'data')) as [Buffer];
    t.same(answer, R.SHADOW_CC_SSL, `${name}: the console's Connection Confirm comes back`);
    t.equal(console.requests.length, before + 1, `${name}: the console named by the ticket got the connection`);
    const got = console.requests.at(-1)!;
    t.notOk(got.toString('latin1').includes(ticket), `${name}: the console never sees the ticket`);
    t.match(parseConnectionRequest(got), { kind: 'done', length: got.length, value: { negotiation: { requestedProtocols: 3 } } }, `${name}: a valid Connection Request`);
    if (carrier === 'pcb') t.same(got, R.FREERDP_CR, `${name}: the Connection Request byte for byte, Cookie: mstshash=demo kept`);
    // Then it is a tunnel: bytes both ways.
    s.write('after TLS');
    const [echo] = (await once(s, 'data')) as [Buffer];
    t.equal(echo.toString(), 'after TLS', `${name}: bytes both ways`);
    s.destroy();
  }
  await until(() => gw.logs.filter((l) => l.event === 'tunnel').length === 3, { timeoutMs: 5000 });
  for (const l of gw.logs.filter((x) => x.event === 'tunnel')) t.match(l, { protocol: 'rdp', transport: 'rdp', user: 'alice', via: 'ticket' });
  t.equal(await tunnelCount(gw, { transport: 'rdp', protocol: 'rdp', result: 'ok' }), 3, 'oneport_tunnels_total{transport="rdp",result="ok"}');
  t.equal(await connectionCount(gw, 'rdp'), 3, 'oneport_connections_total{result="rdp"}');
  t.equal(win1.accepted + win2.accepted, 3, 'one console connection per tunnel, no more');
});

t.test('forged, expired, replayed, cross-VM and cross-protocol tickets, no ticket, and native RDP off for a VM: refused at once, no dial', async (t) => {
  const { gw, win1, win2 } = await setup(t);
  await gw.addVm('locked', [{ protocol: 'rdp', host: '127.0.0.1', port: win1.port }], ['alice'], { nativeRdp: false });
  const good = (await gw.ticket('alice', 'win1', 'rdp')).ticket;
  const keys = gw.ctx.dir.keys();
  const expired = mintTicket(keys, 'win1', 'rdp', 60_000, Date.now() - 120_000).ticket;
  const forWin2 = (await gw.ticket('alice', 'win2', 'rdp')).ticket;
  const vncTicket = (await gw.ticket('alice', 'win1', 'vnc')).ticket;
  const lockedTicket = (await gw.ticket('alice', 'locked', 'rdp')).ticket;

  await refusedAtOnce(t, gw.port, opening.pcb(`${forge(good)}.win1`), 'forged (pcb)');
  await refusedAtOnce(t, gw.port, opening.loadBalanceInfo(`${expired}.win1`), 'expired (load-balance-info)');
  await refusedAtOnce(t, gw.port, opening.msts(`${forWin2}.win1`), 'a win2 ticket for win1');
  await refusedAtOnce(t, gw.port, opening.pcb(`${vncTicket}.win1`), 'a vnc ticket for RDP');
  await refusedAtOnce(t, gw.port, opening.pcb(`${good}.nosuchvm`), 'an unknown VM');
  await refusedAtOnce(t, gw.port, R.FREERDP_CR, 'no ticket at all');
  await refusedAtOnce(t, gw.port, opening.loadBalanceInfo('just-a-balancer-token'), 'a routing token that is not <ticket>.<vm>');
  await refusedAtOnce(t, gw.port, opening.pcb(`${good}.127.0.0.1`), 'an address for a VM');
  t.equal(win1.accepted + win2.accepted, 0, 'none of them reached a console');
  await refusedAtOnce(t, gw.port, opening.pcb(`${lockedTicket}.locked`), 'a VM with nativeRdp: false (its ticket spent)');
  t.equal(win1.accepted, 0, 'not dialled either');

  // Replayed: the good ticket opens a tunnel once; from another address it is spent.
  const s = await send(gw.port, opening.pcb(`${good}.win1`));
  await once(s, 'data');
  t.equal(win1.accepted, 1, 'the good ticket works once');
  await refusedAtOnce(t, gw.port, opening.pcb(`${good}.win1`), 'replayed from another address', { localAddress: '127.0.0.2' });
  t.equal(win1.accepted, 1, 'the replay reached no console');
  s.destroy();

  const refused = gw.logs.filter((l) => l.event === 'tunnel-refused' && l.transport === 'rdp');
  t.ok(refused.length >= 5, `logged as tunnel-refused with transport rdp (${refused.length} lines, rate-limited)`);
  t.ok(refused.some((l) => l.code === 'ONEPORT_ERR_TICKET_INVALID'));
  t.ok(refused.some((l) => l.code === 'ONEPORT_ERR_AUTH_REQUIRED'));
  t.ok(refused.some((l) => l.code === 'ONEPORT_ERR_FORBIDDEN'));
  for (const tk of [good, expired, forWin2, vncTicket, lockedTicket]) t.notOk(gw.logText().includes(tk), 'no ticket in the log');
  t.ok((await tunnelCount(gw, { transport: 'rdp', result: 'ONEPORT_ERR_TICKET_INVALID' })) >= 5, 'counted per transport and code');
});

t.test("FreeRDP's downgrading retries after a refusal are refused at once too; a good ticket's retry goes through", async (t) => {
  const { gw, win1 } = await setup(t);
  const forged = forge((await gw.ticket('alice', 'win1', 'rdp')).ticket);
  // The three requests FreeRDP 2.11 sends for /pcb: /load-balance-info:Cookie: msts=..., answered with failures.
  const retries = [
    Buffer.concat([encodePreconnectionPdu({ id: 0, blob: `${forged}.win1` }), opening.msts(`${forged}.win1`)]),
    ...R.FREERDP_MSTS_RETRIES.slice(1).map((b) => {
      const p = parseConnectionRequest(b);
      if (p.kind !== 'done') throw new Error('fixture');
      return encodeConnectionRequest({ ...p.value, token: { kind: 'msts', value: `${forged}.win1` } });
    }),
  ];
  for (const [i, b] of retries.entries()) await refusedAtOnce(t, gw.port, b, `forged ticket, attempt ${i + 1}`);
  // With /pcb: alone, the retries carry no ticket at all.
  for (const [i, b] of R.FREERDP_RETRIES_AFTER_FAILURE.entries()) await refusedAtOnce(t, gw.port, b, `a /pcb: retry without its PDU (${i + 2})`);
  t.equal(win1.accepted, 0, 'no console connection');

  // A console that answers a failure makes FreeRDP retry with the same routing token, from the
  // same address, within auth.ticketReuseMs: that is the same console session, and it goes through.
  const good = (await gw.ticket('alice', 'win1', 'rdp')).ticket;
  for (const attempt of [1, 2]) {
    const s = await send(gw.port, opening.loadBalanceInfo(`${good}.win1`));
    const [answer] = (await once(s, 'data')) as [Buffer];
    t.same(answer, R.SHADOW_CC_SSL, `attempt ${attempt} with the same ticket reaches the console`);
    s.destroy();
  }
  t.equal(win1.accepted, 2);
  await until(() => gw.logs.filter((l) => l.event === 'tunnel').length === 2, { timeoutMs: 5000 });
  t.equal(new Set(gw.logs.filter((l) => l.event === 'tunnel').map((l) => l.session)).size, 1, 'one console session');
});

t.test('hostile openings: bad lengths, a huge blob, trickled bytes, silence', async (t) => {
  const openingTimeoutMs = 400;
  const { gw, win1, win2 } = await setup(t, { nativeRdp: { openingTimeoutMs } });
  const good = (await gw.ticket('alice', 'win1', 'rdp')).ticket;
  const none = Buffer.alloc(0);

  // Refused by the detectors: never an RDP route, closed at once without a word.
  await refusedAtOnce(t, gw.port, Buffer.from('0300ffff', 'hex'), 'a TPKT length no Connection Request has', { answer: none });
  const huge = Buffer.alloc(24);
  huge.writeUInt32LE(18 + 2 * 4000, 0);
  huge.writeUInt32LE(2, 8);
  huge.writeUInt16LE(4000, 16);
  await refusedAtOnce(t, gw.port, huge, 'a preconnection blob of 4,000 characters', { answer: none });
  t.equal(await connectionCount(gw, 'rejected-unrecognised'), 2, 'counted as unrecognised first bytes');

  // Recognised as RDP, then wrong: an RDP_NEG_FAILURE at once.
  const badLi = Buffer.from(R.FREERDP_CR);
  badLi.fill(0x41, 11, badLi.length); // the mstshash line never ends: no CR LF before the end
  await refusedAtOnce(t, gw.port, badLi, 'a routing token without its CR LF');
  const bad = Buffer.concat([encodePreconnectionPdu({ id: 0, blob: `${good}.win1` }), Buffer.from('030000130ee000000000000100080003000000', 'hex')]);
  bad[bad.length - 6] = 0x09; // RDP_NEG_REQ's length field says 9, it has 8
  await refusedAtOnce(t, gw.port, bad, 'a negotiation request of the wrong length after a good PDU');
  await refusedAtOnce(t, gw.port, Buffer.from('120000000000000002000000000000000100', 'hex'), 'a v2 PDU whose blob length disagrees with its size', { answer: none });

  // Silence after the first bytes: closed at nativeRdp.openingTimeoutMs, answered with the failure.
  const started = Date.now();
  const silent = await send(gw.port, R.FREERDP_CR.subarray(0, 8));
  const { data, elapsedMs } = await closedWithin(silent, 5000);
  t.same(data, REFUSAL, 'an opening cut short gets the failure at the deadline');
  t.ok(elapsedMs >= openingTimeoutMs - 50 && Date.now() - started < openingTimeoutMs + 1500, `closed at the deadline (${elapsedMs} ms)`);

  // Trickled one byte per segment: still an opening, read in full, and refused or carried through.
  const trickled = opening.pcb(`${forge(good)}.win1`);
  const s = await connectRaw(gw.port);
  s.setNoDelay(true);
  const closed = closedWithin(s, 10_000);
  for (const byte of trickled) {
    s.write(Buffer.from([byte]));
    await new Promise((r) => setImmediate(r));
  }
  t.same((await closed).data, REFUSAL, 'a forged ticket trickled one byte at a time: refused once it is all in');
  const ok = await connectRaw(gw.port);
  for (const byte of opening.loadBalanceInfo(`${good}.win1`)) {
    ok.write(Buffer.from([byte]));
    await new Promise((r) => setImmediate(r));
  }
  const [answer] = (await once(ok, 'data')) as [Buffer];
  t.same(answer, R.SHADOW_CC_SSL, 'a good ticket trickled one byte at a time reaches its console');
  ok.destroy();

  t.equal(win1.accepted, 1, 'only the good ticket reached a console');
  t.equal(win2.accepted, 0);
  t.equal(gw.logs.filter((l) => l.level === 50).length, 0, 'nothing logged at error level');
});

/** `name:type:value` lines (CR LF) of an .rdp file. */
function rdpSettings(text: string): Map<string, string> {
  return new Map(text.split('\r\n').filter(Boolean).map((l) => {
    const m = /^([^:]+):([si]):(.*)$/.exec(l);
    if (!m) throw new Error(`not an .rdp line: ${JSON.stringify(l)}`);
    return [m[1]!, m[3]!] as const;
  }));
}

t.test("the portal's .rdp files: the gateway variant and the native one, each with a fresh ticket that works", async (t) => {
  const { gw, win1 } = await setup(t);
  await gw.addVm('locked', [{ protocol: 'rdp', host: '127.0.0.1', port: win1.port, publishedPort: 3390 }], ['alice'], { nativeRdp: false });
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: win1.port }], ['alice']);
  await gw.addVm('hidden', [{ protocol: 'rdp', host: '127.0.0.1', port: win1.port }], ['bob']);
  const api = apiClient(t, gw);
  const { token } = ok(await api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } }), 'login');

  const desktops = ok(await api<Array<{ vm: string; nativeRdp?: boolean }>>('GET', '/api/desktops', { token }));
  t.same(Object.fromEntries(desktops.map((d) => [d.vm, d.nativeRdp])), { win1: true, win2: true, locked: false, desk: undefined }, 'the list says where native RDP is on (RDP desktops only)');

  const viaGateway = await api<string>('GET', '/api/desktops/win1/console.rdp', { token });
  t.equal(viaGateway.status, 200);
  t.match(viaGateway.headers['content-type'], 'application/x-rdp');
  t.match(viaGateway.headers['content-disposition'], 'attachment; filename="win1.rdp"');
  t.equal(viaGateway.headers['cache-control'], 'no-store');
  const g = rdpSettings(viaGateway.body);
  const port = String(gw.port);
  t.match(Object.fromEntries(g), {
    'full address': 'win1',
    gatewayhostname: `localhost:${port}`,
    gatewayusagemethod: '1',
    gatewaycredentialssource: '5',
    gatewayprofileusagemethod: '1',
    gatewayaccesstoken: /^[a-z2-7]{50}$/,
  }, 'the gateway variant: the VM behind the RD Gateway on this port, the ticket as access token');
  t.ok(checkTicket(gw.ctx.dir.keys(), g.get('gatewayaccesstoken')!, 'win1').ok, 'a real ticket for win1');
  t.equal(rdpSettings(ok(await api<string>('GET', '/api/desktops/locked/console.rdp?variant=gateway', { token }))).get('full address'), 'locked:3390', 'a published port other than 3389 is named');

  const native = await api<string>('GET', '/api/desktops/win1/console.rdp?variant=native', { token });
  t.equal(native.status, 200);
  t.match(native.headers['content-disposition'], 'filename="win1-native.rdp"');
  const n = rdpSettings(native.body);
  t.equal(n.get('full address'), `localhost:${port}`, 'the native variant: straight to this port');
  t.match(n.get('loadbalanceinfo'), /^[a-z2-7]{50}\.win1$/);
  t.equal(n.get('pcb'), n.get('loadbalanceinfo'), 'the same <ticket>.<vm> in the preconnection blob');
  t.notOk(native.body.includes(g.get('gatewayaccesstoken')!), 'each file has its own fresh ticket');
  // What the file says, sent the way a client sends it, reaches the console.
  const s = await send(gw.port, opening.loadBalanceInfo(n.get('loadbalanceinfo')!));
  const [answer] = (await once(s, 'data')) as [Buffer];
  t.same(answer, R.SHADOW_CC_SSL, "the native file's ticket opens the tunnel");
  s.destroy();

  const refusals: Array<[string, string, number, string]> = [
    ['an unknown variant', '/api/desktops/win1/console.rdp?variant=mstsc', 400, 'ONEPORT_ERR_VALIDATION'],
    ['native for a VM with native RDP off', '/api/desktops/locked/console.rdp?variant=native', 403, 'ONEPORT_ERR_FORBIDDEN'],
    ['a desktop without RDP', '/api/desktops/desk/console.rdp', 404, 'ONEPORT_ERR_NO_SUCH_PROTOCOL'],
    ['a desktop of someone else', '/api/desktops/hidden/console.rdp', 403, 'ONEPORT_ERR_NOT_ASSIGNED'],
  ];
  for (const [name, path, status, code] of refusals) {
    const r = await api<{ error: { code: string } }>('GET', path, { token });
    t.equal(r.status, status, name);
    t.equal(r.body.error.code, code, name);
  }
  t.equal((await api('GET', '/api/desktops/win1/console.rdp')).status, 401, 'only with a session');

  // The Host header is the only thing in the file a client chose: plain host[:port] or nothing.
  const fetch = async (host: string): Promise<string> => {
    const r = await rawRequest(gw.port, `GET /api/desktops/win1/console.rdp?variant=native HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`, { ca: gw.caCert });
    // A 200 leaves the socket to the caller: the file is what follows the head.
    const chunks: Buffer[] = [r.rest];
    for await (const c of r.socket) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString();
  };
  t.equal(rdpSettings(await fetch('gw.example')).get('full address'), 'gw.example:443', 'a Host without a port came over https: 443');
  t.equal(rdpSettings(await fetch('[2001:db8::1]:9443')).get('full address'), '[2001:db8::1]:9443');
  const evil = await fetch('evil.example/x:1');
  t.equal(rdpSettings(evil).get('full address'), `localhost:${port}`, 'anything else: our first server name and this port');
  t.notMatch(evil, /evil/);
});
