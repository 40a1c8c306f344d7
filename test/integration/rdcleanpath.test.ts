/**
 * The RDCleanPath entrance (`wss://<gateway>/rdcleanpath/<vm>`) with raw WebSocket clients
 * speaking the DER PDUs themselves (protocols/rdcleanpath.ts), against a console that does what an
 * RDP server does first: read an X.224 Connection Request, answer a Connection Confirm, then TLS.
 * What the gateway answers, what it dials (only the directory's console, never the destination the
 * client names), and what it refuses before any dial.
 */
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { X509Certificate } from 'node:crypto';
import type { WebSocket } from 'ws';
import {
  RDCLEANPATH_GENERAL_ERROR,
  RDCLEANPATH_NEGOTIATION_ERROR,
  RDCLEANPATH_VERSION,
  type RdcleanpathPdu,
  decodeRdcleanpath,
  rdcleanpathPdu,
} from '../../protocols/rdcleanpath.js';
import { mintTicket } from '../../gateway/auth/tickets.js';
import { FREERDP_CR_TLS, FREERDP_CR_RDP_SECURITY, SHADOW_CC_HYBRID_REQUIRED, SHADOW_CC_SSL } from '../fixtures/rdp-packets.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startBackend } from '../helpers/net.js';
import { type RdpConsole, answer, der, request, roundTrip, startRdpConsole } from '../helpers/rdp-console.js';
import { closeOf, openWs, opened } from '../helpers/ws.js';
import { forge } from '../helpers/scenario.js';
import { fuzz } from '../helpers/fuzz.js';

async function setup(t: Test, confirm?: Buffer): Promise<{ gw: TestGateway; rdp: RdpConsole }> {
  const rdp = await startRdpConsole(t, confirm);
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: rdp.port }], ['alice']);
  await gw.addVm('other', [{ protocol: 'rdp', host: '127.0.0.1', port: rdp.port }, { protocol: 'vnc', host: '127.0.0.1', port: rdp.port }], ['alice']);
  return { gw, rdp };
}

/** IronRDP opens the proxy address with no subprotocol. */
async function client(t: Test, gw: TestGateway, vm = 'win'): Promise<WebSocket> {
  const ws = openWs(t, gw, `/rdcleanpath/${vm}`, {}, []);
  await opened(ws);
  return ws;
}

/** A refusal: an RDCleanPath general error with `status`, then the close code. */
async function refused(t: Test, ws: WebSocket, status: number, closeCode: number, what: string): Promise<void> {
  const closed = closeOf(ws, 10_000);
  const pdu = await answer(ws);
  t.match(pdu, { version: RDCLEANPATH_VERSION, error: { errorCode: RDCLEANPATH_GENERAL_ERROR, httpStatusCode: status } }, `${what}: RDCleanPath error with HTTP status ${status}`);
  t.equal((await closed).code, closeCode, `${what}: then close ${closeCode}`);
}

t.test('a ticket in proxy_auth: X.224 and TLS with the directory\'s console, the confirm and its certificate back, then the stream', async (t) => {
  const { gw, rdp } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'win', 'rdp');
  const ws = await client(t, gw);
  // The client names another host: ignored, the directory's console is dialled.
  ws.send(request(ticket, { destination: '10.9.9.9:3389' }));
  const pdu = await answer(ws);
  t.same(pdu.x224ConnectionPdu, SHADOW_CC_SSL, 'the console\'s X.224 Connection Confirm, as it sent it');
  t.equal(pdu.serverCertChain?.length, 1, 'its certificate chain');
  t.equal(new X509Certificate(pdu.serverCertChain![0]!).subject, new X509Certificate(rdp.cert).subject, 'the console\'s own certificate');
  t.equal(pdu.serverAddr, 'win:3389', 'server_addr names the VM, not the console\'s address');
  t.equal(pdu.error, undefined);
  t.equal(rdp.accepted, 1, 'the directory\'s console was dialled once');
  t.same(rdp.requests[0], FREERDP_CR_TLS, 'and got the client\'s Connection Request unchanged');
  // After the answer the WebSocket carries the RDP stream, which the gateway encrypts to the console.
  const payload = Buffer.from('client data '.repeat(1000));
  t.same(await roundTrip(ws, payload), payload, 'bytes go to the console inside TLS and come back');
  ws.close(1000);
  await closeOf(ws);
  const line = await new Promise<Record<string, unknown>>((resolve) => {
    const find = (): void => {
      const l = gw.logs.find((x) => x.event === 'tunnel' && x.vm === 'win');
      if (l) resolve(l);
      else setImmediate(find);
    };
    find();
  });
  t.match(line, { protocol: 'rdp', transport: 'rdcleanpath', user: 'alice', via: 'ticket' });
  t.notMatch(gw.logText(), ticket, 'the ticket never reaches the log');
});

t.test('a resume token in proxy_auth reconnects, as after a failover', async (t) => {
  const { gw, rdp } = await setup(t);
  const { resume } = await gw.ticket('alice', 'win', 'rdp');
  const ws = await client(t, gw);
  ws.send(request(resume));
  const pdu = await answer(ws);
  t.same(pdu.x224ConnectionPdu, SHADOW_CC_SSL, 'answered with the console\'s confirm');
  t.equal(rdp.accepted, 1);
});

t.test('the request may arrive in pieces, and bytes after it wait for the console', async (t) => {
  const { gw } = await setup(t);
  const { ticket } = await gw.ticket('alice', 'win', 'rdp');
  const ws = await client(t, gw);
  const pdu = request(ticket);
  const early = Buffer.from('early');
  ws.send(pdu.subarray(0, 3));
  ws.send(Buffer.concat([pdu.subarray(3), early]));
  const got = await new Promise<Buffer[]>((resolve) => {
    const msgs: Buffer[] = [];
    ws.on('message', (m: Buffer) => {
      msgs.push(m);
      if (msgs.length === 2) resolve(msgs);
    });
  });
  t.equal(decodeRdcleanpath(got[0]!).kind, 'done', 'the answer first');
  t.same(got[1], early, 'then the echo of the early bytes, relayed once TLS was up');
});

t.test('refusals: an RDCleanPath error the viewer can show, a close code, and no dial', async (t) => {
  const { gw, rdp } = await setup(t);
  const cases: Array<[string, (ws: WebSocket) => Promise<void> | void, number, number, string]> = [
    ['forged ticket', async (ws) => ws.send(request(forge((await gw.ticket('alice', 'win', 'rdp')).ticket))), 401, 4401, 'win'],
    ['a ticket for another VM', async (ws) => ws.send(request((await gw.ticket('alice', 'other', 'rdp')).ticket)), 401, 4401, 'win'],
    ['a VNC ticket for the VM', async (ws) => ws.send(request((await gw.ticket('alice', 'other', 'vnc')).ticket)), 401, 4401, 'other'],
    ['an expired ticket', (ws) => ws.send(request(mintTicket(gw.ctx.dir.keys(), 'win', 'rdp', 60_000, Date.now() - 120_000).ticket)), 401, 4401, 'win'],
    ['a made-up ticket', (ws) => ws.send(request('a'.repeat(40))), 401, 4401, 'win'],
    ['a resume token for another VM', async (ws) => ws.send(request((await gw.ticket('alice', 'other', 'rdp')).resume)), 401, 4401, 'win'],
    ['a forged resume token', async (ws) => ws.send(request(`${(await gw.ticket('alice', 'win', 'rdp')).resume.slice(0, -4)}AAAA`)), 401, 4401, 'win'],
    ['an unknown VM', async (ws) => ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket)), 401, 4401, 'nosuchvm'],
    ['not DER', (ws) => ws.send(Buffer.from('GET / HTTP/1.1\r\n\r\n')), 400, 1008, 'win'],
    ['BER, not DER (a non-minimal length)', (ws) => ws.send(Buffer.concat([Buffer.from([0x30, 0x81, 0x06]), Buffer.from([0xa0, 0x04, 0x02, 0x02, 0x0d, 0x3e])])), 400, 1008, 'win'],
    ['another version', (ws) => ws.send(Buffer.from([0x30, 0x06, 0xa0, 0x04, 0x02, 0x02, 0x0d, 0x3f])), 400, 1008, 'win'],
    ['a length past the cap', (ws) => ws.send(Buffer.from([0x30, 0x83, 0x7f, 0xff, 0xff, 0xa0, 0x04, 0x02, 0x02, 0x0d, 0x3e])), 413, 1009, 'win'],
    ['a response instead of a request', (ws) => ws.send(der(rdcleanpathPdu({ type: 'response', x224ConnectionResponse: SHADOW_CC_SSL, serverCertChain: [], serverAddr: 'x' }))), 400, 1008, 'win'],
    ['a Connection Request without TLS', async (ws) => ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket, { x224ConnectionPdu: FREERDP_CR_RDP_SECURITY })), 400, 1008, 'win'],
    ['garbage instead of X.224', async (ws) => ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket, { x224ConnectionPdu: Buffer.from('hello') })), 400, 1008, 'win'],
    ['a preconnection blob', async (ws) => ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket, { preconnectionBlob: 'other-vm' })), 400, 1008, 'win'],
  ];
  for (const [what, send, status, code, vm] of cases) {
    const ws = await client(t, gw, vm);
    await send(ws);
    await refused(t, ws, status, code, what);
  }
  t.equal(rdp.accepted, 0, 'no refused request dialled the console');
});

t.test('a client that sends nothing, or half a request, is cut at the deadline', async (t) => {
  const rdp = await startRdpConsole(t);
  const gw = await startTestGateway(t, { http: { headersTimeoutMs: 300 } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: rdp.port }], ['alice']);
  const silent = await client(t, gw);
  await refused(t, silent, 400, 1008, 'nothing sent');
  const half = await client(t, gw);
  half.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket).subarray(0, 20));
  await refused(t, half, 400, 1008, 'half a request');
  t.equal(rdp.accepted, 0);
});

t.test('the console refuses the negotiation: the client gets its RDP_NEG_FAILURE in a negotiation error', async (t) => {
  const { gw, rdp } = await setup(t, SHADOW_CC_HYBRID_REQUIRED);
  const ws = await client(t, gw);
  ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket));
  const closed = closeOf(ws, 10_000);
  const pdu = await answer(ws);
  t.match(pdu, { error: { errorCode: RDCLEANPATH_NEGOTIATION_ERROR } }, 'a negotiation error');
  t.same(pdu.x224ConnectionPdu, SHADOW_CC_HYBRID_REQUIRED, 'carrying the console\'s Connection Confirm');
  t.equal((await closed).code, 4502);
  t.equal(rdp.accepted, 1);
});

t.test('a console that answers X.224 but never TLS: 502 within the dial deadline', async (t) => {
  const silent = await startBackend(t, (s) => s.once('data', () => s.write(SHADOW_CC_SSL)));
  const gw = await startTestGateway(t, { tunnel: { dialTimeoutMs: 500 } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: silent.port }], ['alice']);
  const ws = await client(t, gw);
  ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket));
  await refused(t, ws, 502, 4502, 'no TLS from the console');
  t.ok(gw.logs.some((l) => l.event === 'tunnel-refused' && l.transport === 'rdcleanpath' && /TLS/.test(String(l.msg))), 'the log says the TLS handshake failed');
});

t.test('a console that is not RDP at all: 502', async (t) => {
  const http = await startBackend(t, (s) => s.once('data', () => s.end('HTTP/1.1 400 Bad Request\r\n\r\n')));
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: http.port }], ['alice']);
  const ws = await client(t, gw);
  ws.send(request((await gw.ticket('alice', 'win', 'rdp')).ticket));
  await refused(t, ws, 502, 4502, 'not an X.224 confirm');
});

t.test('generated hostile requests (random bytes, mutated and cut requests, any split) get an error PDU and a documented close, and never a dial', async (t) => {
  const rdp = await startRdpConsole(t);
  const gw = await startTestGateway(t, { http: { headersTimeoutMs: 300 } });
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: rdp.port }], ['alice']);
  // A request whose ticket is forged: however it is mangled, nothing here may reach the console.
  const base = request(forge((await gw.ticket('alice', 'win', 'rdp')).ticket));
  const mutated = fc
    .tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 }), fc.nat(base.length))
    .map(([at, byte, cut]) => {
      const b = Buffer.from(base);
      b[at] = byte;
      return b.subarray(0, Math.max(1, cut));
    });
  const bytes = fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 400 }).map((a) => Buffer.from(a)), mutated, fc.constant(base));
  // 1013: at a larger ONEPORT_FUZZ_SCALE the forged tickets spend the address's failure budget.
  const documented = new Set([1008, 1009, 1013, 4401]);
  await fc.assert(
    fc.asyncProperty(bytes, fc.nat(400), async (payload, split) => {
      const ws = await client(t, gw);
      const closed = closeOf(ws, 5000);
      const pdus: RdcleanpathPdu[] = [];
      ws.on('message', (m: Buffer) => {
        const d = decodeRdcleanpath(m);
        if (d.kind === 'done') pdus.push(d.value);
      });
      const at = Math.min(split, payload.length);
      if (at > 0) ws.send(payload.subarray(0, at));
      if (at < payload.length) ws.send(payload.subarray(at));
      const { code } = await closed;
      return documented.has(code) && pdus.length === 1 && pdus[0]!.error?.errorCode === RDCLEANPATH_GENERAL_ERROR;
    }),
    fuzz(60),
  );
  t.equal(rdp.accepted, 0, 'the console was never dialled');
  t.notOk(gw.logs.some((l) => Number(l.level) >= 50), 'nothing logged at error level');
});
