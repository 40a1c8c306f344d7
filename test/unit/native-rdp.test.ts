/**
 * The native RDP entrance's pure parts and its leg, on FreeRDP 2.11's captured openings: where the
 * ticket rides (preconnection blob, routing token with or without `Cookie: msts=`), what the
 * console gets instead (no ticket, `Cookie: mstshash=` kept, lengths fixed), the tunnel request an
 * opening becomes, the bounded reader over a real socket in any split, and the leg's two answers.
 */
import t from 'tap';
import fc from 'fast-check';
import net from 'node:net';
import { once } from 'node:events';
import { FUZZ_SEED, runs } from '../helpers/fuzz.js';
import { closedWithin, startBackend } from '../helpers/net.js';
import * as R from '../fixtures/rdp-packets.js';
import {
  type RdpOpening, NegFailureCode, encodeConnectionRequest, encodePreconnectionPdu, openingCarrier, parseConnectionConfirm, parseConnectionRequest,
  parseRdpOpening, requestForConsole,
} from '../../protocols/rdp.js';
import { MAX_OPENING_BYTES, nativeRequest, readOpening } from '../../gateway/rdp/native.js';
import { REFUSAL, RdpLeg } from '../../gateway/tunnel/legs/rdp.js';
import { OneportError } from '../../gateway/errors.js';
import type { TunnelTarget } from '../../gateway/tunnel/request.js';
import { NO_PREFACE } from '../../gateway/tunnel/reach.js';

const TICKET = 'a'.repeat(50);

function opening(bytes: Buffer): RdpOpening {
  const p = parseRdpOpening(bytes);
  if (p.kind !== 'done') throw new Error(`not an opening: ${p.kind}`);
  return p.value;
}

/** FreeRDP's Connection Request with `/load-balance-info:<text>` (the token line replaces the mstshash cookie). */
function withToken(text: string, kind: 'raw' | 'msts' | 'mstshash' = 'raw'): Buffer {
  const base = opening(R.FREERDP_CR_LOAD_BALANCE_INFO).request;
  return encodeConnectionRequest({ ...base, token: { kind, value: text } });
}

t.test('where the ticket rides: preconnection blob, routing token raw or as Cookie: msts=', async (t) => {
  t.same(openingCarrier(opening(R.FREERDP_PCB_THEN_CR)), { ok: true, value: 'tk1abc.win10' }, '/pcb: (the mstshash cookie is no carrier)');
  t.same(openingCarrier(opening(R.FREERDP_CR_LOAD_BALANCE_INFO)), { ok: true, value: 'tk1abc.win10' }, '/load-balance-info: verbatim');
  t.same(openingCarrier(opening(R.FREERDP_CR_MSTS)), { ok: true, value: 'tk1abc.win10' }, 'Cookie: msts=');
  t.same(openingCarrier(opening(R.FREERDP_PCB_THEN_MSTS_CR)), { ok: true, value: 'tk1abc.win10' }, 'both, agreeing');
  t.same(openingCarrier(opening(R.FREERDP_CR)), { ok: true, value: null }, 'a plain request carries nothing');
  t.same(openingCarrier(opening(Buffer.concat([R.FREERDP_PCB_ID_ONLY, R.FREERDP_CR]))), { ok: true, value: null }, '/pcid: alone carries nothing');
  const differ = openingCarrier(opening(Buffer.concat([R.FREERDP_PCB_BLOB, withToken('tk1abc.other')])));
  t.match(differ, { ok: false, code: 'carriers-differ' }, 'two different targets in one opening');
});

t.test('what the console gets: no preconnection PDU, no ticket, the mstshash cookie kept, lengths fixed', async (t) => {
  const viaPcb = requestForConsole(opening(R.FREERDP_PCB_THEN_CR));
  t.same(viaPcb, R.FREERDP_CR, '/pcb: the PDU goes, the Connection Request (with its Cookie: mstshash=demo) is forwarded byte for byte');
  for (const [name, bytes] of [['/load-balance-info:', R.FREERDP_CR_LOAD_BALANCE_INFO], ['Cookie: msts=', R.FREERDP_CR_MSTS], ['/pcb: and msts', R.FREERDP_PCB_THEN_MSTS_CR]] as const) {
    const out = requestForConsole(opening(bytes));
    const p = parseConnectionRequest(out);
    t.match(p, { kind: 'done', length: out.length, value: { token: null, negotiation: { requestedProtocols: 3 } } }, `${name}: a valid request without the token`);
    t.equal(out.readUInt16BE(2), out.length, `${name}: TPKT length`);
    t.equal(out[4], out.length - 5, `${name}: X.224 LI`);
    t.notOk(out.toString('latin1').includes('tk1abc'), `${name}: the ticket is not in it`);
  }
  t.same(requestForConsole(opening(R.FREERDP_CR_RDP_SECURITY)), R.FREERDP_CR_RDP_SECURITY, 'standard RDP security (no RDP_NEG_REQ) is forwarded as is');
});

t.test('the tunnel request an opening becomes', async (t) => {
  const vm = 'win.example';
  const r = nativeRequest(opening(withToken(`${TICKET}.${vm}`)), '192.0.2.7');
  t.same(r, { vmName: vm, credential: { kind: 'ticket', ticket: TICKET }, hints: { protocol: 'rdp' }, tls: false, client: '192.0.2.7', hold: true });
  t.equal(nativeRequest(opening(withToken(`${TICKET.toUpperCase()}.WIN`, 'msts')), 'c').vmName, 'win', 'upper case folded, as in a CONNECT host');
  const pcb = Buffer.concat([encodePreconnectionPdu({ id: 0, blob: `${TICKET}.win` }), R.FREERDP_CR]);
  t.match(nativeRequest(opening(pcb), 'c'), { vmName: 'win', credential: { ticket: TICKET } }, 'from the preconnection blob');
  const refusals: Array<[string, Buffer, string]> = [
    ['no carrier', R.FREERDP_CR, 'ONEPORT_ERR_AUTH_REQUIRED'],
    ['a user name in mstshash is no ticket', withToken(`${TICKET}.win`, 'mstshash'), 'ONEPORT_ERR_AUTH_REQUIRED'],
    ['a carrier without a ticket', withToken('win'), 'ONEPORT_ERR_AUTH_REQUIRED'],
    ['a ticket of the wrong shape', withToken('tk1abc.win10'), 'ONEPORT_ERR_AUTH_REQUIRED'],
    ['an address for a VM', withToken(`${TICKET}.127.0.0.1`), 'ONEPORT_ERR_ADDRESS_LITERAL'],
    ['two carriers that disagree', Buffer.concat([encodePreconnectionPdu({ id: 0, blob: `${TICKET}.a` }), withToken(`${TICKET}.b`)]), 'ONEPORT_ERR_BAD_REQUEST'],
  ];
  for (const [name, bytes, code] of refusals) {
    t.throws(() => nativeRequest(opening(bytes), 'c'), { code }, `${name}: ${code}`);
  }
});

/** A connected pair of real sockets on loopback: [the gateway's side, the client's side]. */
async function socketPair(t: { teardown(fn: () => unknown): void }): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  client.on('error', () => {});
  const [ours] = (await once(server, 'connection')) as [net.Socket];
  ours.on('error', () => {});
  ours.pause();
  t.teardown(() => {
    ours.destroy();
    client.destroy();
  });
  return [ours, client];
}

t.test('the opening reader: any split over a real socket gives the same opening, and what follows is kept', async (t) => {
  const extra = Buffer.from('early');
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(R.FREERDP_PCB_THEN_CR, R.FREERDP_CR_LOAD_BALANCE_INFO, R.FREERDP_PCB_THEN_MSTS_CR, R.FREERDP_CR_RDP_SECURITY),
      fc.array(fc.nat(120), { minLength: 1, maxLength: 5 }),
      async (bytes, cuts) => {
        const [ours, client] = await socketPair(t);
        const all = Buffer.concat([bytes, extra]);
        const reading = readOpening(ours, 5000);
        let at = 0;
        for (const cut of [...cuts, all.length]) {
          const end = Math.min(all.length, at + cut);
          if (end > at) client.write(all.subarray(at, end));
          at = end;
          // Let the pieces arrive as separate segments.
          await new Promise((r) => setImmediate(r));
        }
        const r = await reading;
        ours.destroy();
        client.destroy();
        if (r.kind !== 'opening') return false;
        // Bytes that came with the opening's last segment are kept; later ones wait in the (paused) socket.
        return r.opening.request.dstRef === 0 && extra.subarray(0, r.rest.length).equals(r.rest);
      },
    ),
    { numRuns: runs(40), seed: FUZZ_SEED },
  );
  t.pass();
});

t.test('the opening reader: malformed, silent and closing clients', async (t) => {
  {
    const [ours, client] = await socketPair(t);
    client.write(Buffer.from('0300ffff', 'hex'));
    t.match(await readOpening(ours, 5000), { kind: 'malformed' }, 'a TPKT length no Connection Request has');
  }
  {
    const [ours, client] = await socketPair(t);
    // cbSize claims a 1,042-byte PDU: the largest blob there is, plus one code unit.
    const huge = Buffer.alloc(20);
    huge.writeUInt32LE(18 + 2 * 513, 0);
    huge.writeUInt32LE(2, 8);
    client.write(huge);
    t.match(await readOpening(ours, 5000), { kind: 'malformed', reason: 'too-long' }, 'a preconnection blob over the cap, refused from its size field');
  }
  {
    const [ours] = await socketPair(t);
    const started = Date.now();
    t.same(await readOpening(ours, 200), { kind: 'timeout' }, 'silence: the deadline');
    t.ok(Date.now() - started < 2000, 'and not much later');
  }
  {
    const [ours, client] = await socketPair(t);
    client.end(R.FREERDP_CR.subarray(0, 10));
    t.same(await readOpening(ours, 5000), { kind: 'closed' }, 'a client that hangs up half-way');
  }
  t.equal(MAX_OPENING_BYTES, 18 + 2 * 512 + 259, 'the longest opening: the longest blob, then the longest request');
});

function fakeTarget(nativeRdp?: boolean): TunnelTarget {
  return {
    vm: { name: 'win', node: 'n', state: 'running', epoch: 0, endpoints: [], users: [], groups: [], ...(nativeRdp === undefined ? {} : { nativeRdp }) },
    endpoint: { protocol: 'rdp', host: '127.0.0.1', port: 1, publishedPort: 3389 },
    user: { name: 'u', passwordHash: '', roles: [], groups: [], sessionsNotBefore: 0 },
    sessionId: 's',
    via: 'ticket',
  };
}

t.test('the leg: a refusal is an RDP_NEG_FAILURE at once, then the end', async (t) => {
  t.match(parseConnectionConfirm(REFUSAL), { kind: 'done', value: { negotiation: { type: 'failure', failureCode: NegFailureCode.INCONSISTENT_FLAGS } } });
  const [ours, client] = await socketPair(t);
  const leg = new RdpLeg(ours, { client: '127.0.0.1', acceptedAt: process.hrtime.bigint(), toConsole: Buffer.alloc(0) });
  leg.refuse(new OneportError('ONEPORT_ERR_TICKET_INVALID'));
  const { data, elapsedMs } = await closedWithin(client, 3000);
  t.same(data, REFUSAL, 'exactly the X.224 Connection Confirm with the failure');
  t.ok(elapsedMs < 1000, `closed at once (${elapsedMs} ms)`);
  t.throws(() => leg.admit(fakeTarget(false)), { code: 'ONEPORT_ERR_FORBIDDEN' }, 'a VM with nativeRdp: false is refused before its console is dialled');
  t.doesNotThrow(() => leg.admit(fakeTarget()), 'unset: allowed');
  t.doesNotThrow(() => leg.admit(fakeTarget(true)));
});

t.test('the leg: attached, the console gets the request without the ticket first, then the bytes both ways', async (t) => {
  const consoleSide = await startBackend(t, () => {});
  const [ours, client] = await socketPair(t);
  const toConsole = requestForConsole(opening(R.FREERDP_CR_LOAD_BALANCE_INFO));
  const leg = new RdpLeg(ours, { client: '127.0.0.1', acceptedAt: process.hrtime.bigint(), toConsole });
  const dialled = net.connect(consoleSide.port, '127.0.0.1');
  dialled.on('error', () => {});
  const [accepted] = await Promise.all([consoleSide.nextConnection(), once(dialled, 'connect')]);
  const pump = leg.attach({ socket: dialled, preface: NO_PREFACE }, fakeTarget(), { idleTimeoutMs: 0 });
  const [first] = (await once(accepted, 'data')) as [Buffer];
  t.same(first.subarray(0, toConsole.length), toConsole, 'the stripped Connection Request comes first');
  accepted.write(R.SHADOW_CC_SSL);
  const [answer] = (await once(client, 'data')) as [Buffer];
  t.same(answer, R.SHADOW_CC_SSL, "the console's Connection Confirm reaches the client");
  client.destroy();
  const result = await pump.done;
  t.equal(result.bytesToConsole, toConsole.length, 'counted');
});
