/**
 * Connection caps and WebSocket keep-alive. The rest of the bad-input list lives in
 * hostile.test.ts, limits.test.ts and websocket.test.ts.
 */
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { connectionCount, setupDesk } from '../helpers/scenario.js';
import { closedWithin, connectRaw, rawRequest } from '../helpers/net.js';
import { until } from '../helpers/wait.js';
import { opened, openWs } from '../helpers/ws.js';

t.test('limits.maxConnections: connections beyond it are dropped and counted', async (t) => {
  const { gw } = await setupDesk(t, { limits: { maxConnections: 3 } });
  const held: net.Socket[] = [];
  t.teardown(() => held.forEach((s) => s.destroy()));
  // Three addresses, one connection each: none holds more than its fair share (admission.ts), so
  // only the global cap stands in the way of a fourth.
  for (const address of ['127.0.0.1', '127.0.0.2', '127.0.0.3']) held.push(await connectRaw(gw.port, { localAddress: address }));
  const extra = await connectRaw(gw.port, { localAddress: '127.0.0.4' });
  await closedWithin(extra, 5000);
  t.equal(await connectionCount(gw, 'dropped-max-connections'), 1);
  held.shift()!.destroy();
  // A slot is free again once the gateway has seen the close.
  await until(async () => ((await gw.ctx.metrics.connectionsActive.get()).values[0]?.value ?? 0) <= 2, {
    timeoutMs: 5000,
    what: 'the closed connection released',
  });
  const again = await rawRequest(gw.port, `CONNECT ${(await gw.ticket('alice', 'desk')).ticket}.desk:5900 HTTP/1.1\r\n\r\n`);
  t.equal(again.status, 200, 'served again below the limit');
  again.socket.destroy();
});

t.test('WebSocket keep-alive: a client that stops answering pings is dropped', async (t) => {
  const { gw, echo } = await setupDesk(t, { tunnel: { wsPingIntervalMs: 200 } });
  const ws = openWs(t, gw, `/tunnel/desk/vnc?ticket=${(await gw.ticket('alice', 'desk')).ticket}`, { autoPong: false }, []);
  await opened(ws);
  const consoleSide = echo.open.size > 0 ? [...echo.open][0]! : await echo.nextConnection();
  const pinged = once(ws, 'ping');
  const [code] = (await once(ws, 'close')) as [number];
  await pinged;
  t.equal(code, 1006, 'the gateway cut the silent client');
  await new Promise((resolve) => consoleSide.once('close', resolve));
  t.pass('and closed its console leg');
});
