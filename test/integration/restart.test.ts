/**
 * Same-host restart without a refused connection (issue 15): `oneport serve` given SIGUSR2 starts
 * a successor from the same command line, passes it the listening socket, and leaves once the
 * successor accepts. A client opening connections in a loop through the switch sees no refused or
 * reset connection and gets an answer on every one; a CONNECT tunnel open before the switch is
 * closed (the client reconnects) and a new one opens through the successor.
 */
import t from 'tap';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openAdmin } from '../../gateway/admin.js';
import { startBackend, rawRequest, echoRoundTrip, closedWithin } from '../helpers/net.js';
import { clearConnect } from '../helpers/scenario.js';
import { deadline, eventually } from '../helpers/wait.js';
import { spawnServe } from '../helpers/serve.js';



/** One connection: the first bytes of an answer to a plain GET, or the error that ended it. */
function probe(port: number): Promise<'answered' | string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    const timer = setTimeout(() => {
      s.destroy();
      resolve('no answer within 5 s');
    }, 5000);
    const done = (what: string): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(what);
    };
    s.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    s.on('connect', () => s.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'));
    s.once('data', () => done('answered'));
    s.on('close', () => done('closed without an answer'));
  });
}

for (const workers of [1, 2]) t.test(`SIGUSR2 (workers: ${workers}): the successor takes the listening socket; no connection is refused or reset`, async (t) => {
  const state = mkdtempSync(join(tmpdir(), 'oneport-restart-'));
  t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const config = join(state, 'config.json');
  writeFileSync(config, JSON.stringify({ listen: '127.0.0.1:0', state, nodeId: 'solo', workers, demo: { enabled: false }, log: { level: 'info', format: 'json' }, tunnel: { protocolCheck: false }, shutdown: { drainMs: 10_000 } }));
  const { proc, lines, exited } = spawnServe(t, config, state);
  const listening = await eventually(() => lines.find((l) => l.event === 'listening'), 30_000, 'listening');
  const port = Number(listening.port);

  const echo = await startBackend(t);
  const admin = await openAdmin(state);
  await admin.putUser('alice', { password: 'alice-password-1' });
  await admin.putVm({ name: 'desk', node: 'solo', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
  const ticket = async (): Promise<string> => String((await (await openAdmin(state)).ticket('alice', 'desk', 'vnc')).ticket);
  await admin.close();
  const tunnel = await rawRequest(port, clearConnect(await ticket()));
  t.equal(tunnel.status, 200, 'a CONNECT tunnel before the restart');
  t.same(await echoRoundTrip(tunnel.socket, Buffer.from('before')), Buffer.from('before'));
  const tunnelClosed = closedWithin(tunnel.socket, 20_000);

  // The client loop: a new connection every few ms, through the whole switch.
  const outcomes = new Map<string, number>();
  let looping = true;
  const loop = (async () => {
    while (looping) {
      const o = await probe(port);
      outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();

  await eventually(() => ((outcomes.get('answered') ?? 0) > 20 ? true : undefined), 10_000, 'loop under way');
  proc.kill('SIGUSR2');
  // (its pid is killed at teardown, like every process the node starts)
  await eventually(() => lines.find((l) => l.event === 'restart-spawned'), 10_000, 'successor spawned');
  await eventually(() => (lines.filter((l) => l.event === 'listening').length >= 2 ? true : undefined), 60_000, 'successor listening');
  t.equal(await Promise.race([exited, deadline(20_000, 'the old process exiting')]), 0, 'the old process exits 0 once handed off');
  await tunnelClosed;
  t.pass('the tunnel open before the switch was closed (the client reconnects)');
  const answeredBefore = outcomes.get('answered') ?? 0;
  await eventually(() => ((outcomes.get('answered') ?? 0) > answeredBefore + 20 ? true : undefined), 10_000, 'the successor answering');
  looping = false;
  await loop;
  const failed = [...outcomes].filter(([o]) => o !== 'answered');
  t.same(failed, [], `every connection answered through the switch (${outcomes.get('answered')} connections)`);

  const again = await rawRequest(port, clearConnect(await ticket()));
  t.equal(again.status, 200, 'a new tunnel through the successor');
  t.same(await echoRoundTrip(again.socket, Buffer.from('after')), Buffer.from('after'));
  again.socket.destroy();
  t.ok(lines.some((l) => l.event === 'handed-off'), 'the old process logged the hand-off');
});
