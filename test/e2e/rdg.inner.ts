/**
 * Run by rdg.test.ts inside `unshare -n`: xrdp on loopback, the gateway in-process, and xfreerdp
 * as a user runs it against an RD Gateway: `/g:<gateway> /gt:http /gat:<ticket> /v:<vm>`.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { type Run, runXfreerdp, xfreerdpTo } from '../helpers/rdp.js';
import { acceptedConnections } from '../helpers/scenario.js';
import { startXrdp } from '../helpers/xrdp.js';
import { startXvfb } from '../helpers/x11.js';
import { outsideNetns } from '../helpers/netns.js';
import { until } from '../helpers/wait.js';
import { twoNodesWithWin } from '../helpers/cluster.js';

/** Tunnel log lines for `vm` on this gateway. */
const tunnelsOf = (gw: TestGateway, vm: string): Array<Record<string, unknown>> => gw.logs.filter((l) => l.event === 'tunnel' && l.vm === vm);

function gatewayArgs(port: number, ticket: string, gt: string, vm = 'win'): string[] {
  // The rdg debug log says whether the WebSocket upgrade happened ("Upgraded to websocket").
  return [`/g:127.0.0.1:${port}`, `/gt:${gt}`, `/gat:${ticket}`, `/v:${vm}`, '/cert:ignore', '/auth-only', '/u:x', '/p:y', '/log-filters:com.freerdp.core.gateway.rdg:DEBUG'];
}

t.test('xfreerdp /g: /gt:http /gat:<ticket> reaches xrdp through the RD Gateway entrance', { skip: outsideNetns }, async (t: Test) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-rdg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const xrdp = await startXrdp(t, dir);
  const gw = await startTestGateway(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: xrdp.port, publishedPort: 3389 }], ['alice']);
  const x = await startXvfb(t);
  const established = (): number => (xrdp.log().match(/TLS connection established from 127\.0\.0\.1/g) ?? []).length;

  const variants: Array<[string, string, string]> = [
    ['http', 'rdg-ws', 'the WebSocket variant'],
    ['http,no-websockets', 'rdg-http', 'the legacy pair'],
  ];
  for (const [gt, transport, what] of variants) {
    const before = established();
    const { ticket } = await gw.ticket('alice', 'win', 'rdp');
    const run: Run = await xfreerdpTo(t, () => acceptedConnections(gw), x.display, dir, gatewayArgs(gw.port, ticket, gt));
    t.equal(run.code, 0, `${what}: xfreerdp /auth-only exits 0`, { output: run.out });
    if (transport === 'rdg-ws') t.match(run.out, /Upgraded to websocket/, `${what}: FreeRDP says it upgraded to a WebSocket`);
    else t.notMatch(run.out, /Upgraded to websocket/, `${what}: no WebSocket`);
    t.equal(established(), before + 1, `${what}: xrdp's log shows the session's TLS connection`);
    await t.resolves(until(() => tunnelsOf(gw, 'win').some((l) => l.transport === transport), { intervalMs: 50 }), `${what}: the gateway logged a ${transport} tunnel`);
    const line = tunnelsOf(gw, 'win').find((l) => l.transport === transport)!;
    t.match(line, { protocol: 'rdp', user: 'alice', via: 'ticket' });
    t.ok(Number(line.bytesToClient) > 100 && Number(line.bytesToConsole) > 100, `${what}: the TLS handshake went through`);
    t.notMatch(gw.logText(), ticket, `${what}: the ticket never reaches the log`);
  }

  // A made-up ticket: FreeRDP reports the gateway's refusal and stops; xrdp never sees it.
  const before = established();
  // Killed at the 15 s deadline once in five runs here, with no output at all (stdout lost to the
  // kill); the CONNECT e2e saw the same once. The timestamped debug log shows where if it recurs.
  const forgedStarted = Date.now();
  const forged = await xfreerdpTo(t, () => acceptedConnections(gw), x.display, dir, [...gatewayArgs(gw.port, 'a'.repeat(50), 'http'), '/log-level:DEBUG'], 15_000);
  t.comment(`forged ticket: xfreerdp gave up after ${Date.now() - forgedStarted} ms (exit ${String(forged.code)})`);
  t.not(forged.code, null, 'xfreerdp gave up by itself', { output: forged.out });
  t.not(forged.code, 0, 'a made-up ticket gets nowhere', { output: forged.out });
  t.match(forged.out, /E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED|ACCESS_DENIED/, 'FreeRDP reports the refusal', { output: forged.out });
  t.equal(established(), before, 'and xrdp saw no connection for it');
});

/**
 * A plain L4 balancer at its least helpful: a connection's first request goes to the first node,
 * the next connection's to the second, and so on in turn.
 */
async function roundRobin(t: Test, ports: readonly number[]): Promise<{ port: number; sent: number[] }> {
  const sent = ports.map(() => 0);
  let next = 0;
  const server = net.createServer((client) => {
    const i = next++ % ports.length;
    sent[i]!++;
    const upstream = net.connect(ports[i]!, '127.0.0.1');
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as net.AddressInfo).port, sent };
}

t.test('the legacy pair split over two nodes by a round-robin balancer still reaches xrdp', { skip: outsideNetns }, async (t: Test) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-rdg-cluster-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const xrdp = await startXrdp(t, dir);
  const { a, b, ticket: ticketAt } = await twoNodesWithWin(t, xrdp.port);
  const ticket = await ticketAt(b);
  const x = await startXvfb(t);
  const balancer = await roundRobin(t, [a.port, b.port]);
  const established = (xrdp.log().match(/TLS connection established from 127\.0\.0\.1/g) ?? []).length;

  const run = await runXfreerdp(x.display, dir, gatewayArgs(balancer.port, ticket, 'http,no-websockets'));
  t.equal(run.code, 0, 'xfreerdp /auth-only exits 0', { output: run.out });
  t.same(balancer.sent, [1, 1], 'OUT went to na, IN to nb');
  const relayed = await b.waitFor((l) => l.event === 'rdg-relayed', 5_000);
  t.equal(relayed.node, a.id, 'nb relayed the IN request to na, which held the OUT');
  const line = await a.waitFor((l) => l.event === 'tunnel' && l.vm === 'win', 10_000);
  t.match(line, { transport: 'rdg-http', user: 'alice' }, 'the tunnel is na\'s');
  t.equal((xrdp.log().match(/TLS connection established from 127\.0\.0\.1/g) ?? []).length, established + 1, "xrdp's log shows the session");
});
