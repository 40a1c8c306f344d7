/**
 * A drain (drain.ts) waits for the tunnels still being set up, not only for those registered: a
 * WebSocket tunnel that began during the drain's unready period, and whose console answered only
 * after the last registered tunnel had been handed over, is told to resume elsewhere (4001) like
 * the others. (Before, the drain ended with the registry empty and the stop cut that tunnel.)
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { startTestGateway } from '../helpers/gateway.js';
import { startBackend } from '../helpers/net.js';
import { closeOf, opened, openWs } from '../helpers/ws.js';
import { deadline } from '../helpers/wait.js';

/** A VNC console that sends its banner only when told (`release`), then echoes. */
async function slowConsole(t: Test): Promise<{ port: number; connected: Promise<void>; release: () => void }> {
  const held: net.Socket[] = [];
  let connected!: () => void;
  const first = new Promise<void>((r) => (connected = r));
  let released = false;
  const server = net.createServer((s) => {
    s.on('error', () => s.destroy());
    s.on('data', (d) => s.write(d));
    if (released) s.write('RFB 003.008\n');
    else held.push(s);
    connected();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of held) s.destroy();
    server.close();
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    connected: first,
    release: () => {
      released = true;
      for (const s of held.splice(0)) s.write('RFB 003.008\n');
    },
  };
}

t.test('a tunnel still being set up when the last one ends is told too, not cut', async (t) => {
  const gw = await startTestGateway(t, { shutdown: { drainMs: 15_000, unreadyMs: 1500 }, tunnel: { protocolCheck: false } });
  const echo = await startBackend(t);
  const slow = await slowConsole(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 }], ['alice']);
  // Its banner is checked before the client is answered: the setup waits for it.
  await gw.addVm('slow', [{ protocol: 'vnc', host: '127.0.0.1', port: slow.port, publishedPort: 5900 }], ['alice'], { protocolCheck: true });

  const first = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`);
  await opened(first);
  const firstClosed = closeOf(first, 20_000);
  const lateTicket = (await gw.ticket('alice', 'slow')).ticket;

  const drained = gw.drain({ cause: 'test' });
  // Within the unready period: still served, and its console is slow to answer.
  const late = openWs(t, gw, `/tunnel/slow/vnc?ticket=${lateTicket}`);
  const lateClosed = closeOf(late, 20_000);
  const lateOpened = opened(late, 20_000);
  lateOpened.catch(() => {});
  await Promise.race([slow.connected, deadline(10_000, 'the slow console dialled')]);
  t.equal(gw.ctx.tunnels.settingUp, 1, 'one tunnel is being set up');

  t.equal((await firstClosed).code, 4001, 'the open tunnel was told to resume elsewhere');
  // The registry is empty now; the setup goes on.
  t.equal(gw.ctx.tunnels.size, 0);
  t.equal(gw.ctx.tunnels.settingUp, 1, 'the late tunnel is still being set up');
  slow.release();
  await lateOpened;
  t.equal((await lateClosed).code, 4001, 'the late tunnel, set up after the last one ended, was told too');
  await drained;
  t.equal(gw.ctx.tunnels.settingUp, 0);
});
