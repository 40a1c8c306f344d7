/**
 * Regression tests for the security review (issue 10): each names the finding it covers and fails
 * without its fix. Real gateway, real sockets on loopback.
 */
import t from 'tap';
import { once } from 'node:events';
import { basic, echoRoundTrip, rawRequest } from '../helpers/net.js';
import { setupDesk } from '../helpers/scenario.js';

const upgrade = (path: string, proto = 'websocket'): string =>
  `GET ${path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: ${proto}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;

t.test('1: requests that once stopped the process get 400, and every tunnel keeps flowing', async (t) => {
  const { gw } = await setupDesk(t);
  const { ticket } = await gw.ticket('alice', 'desk');
  const tunnel = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca: gw.caCert });
  t.equal(tunnel.status, 200, 'a tunnel is open before the hostile requests');
  t.teardown(() => tunnel.socket.destroy());
  const hostile: Array<[string, string, number]> = [
    ['malformed %-escape in a tunnel path', upgrade('/tunnel/%E0%A4%A/vnc'), 400],
    ['malformed %-escape in the protocol', upgrade('/tunnel/desk/%ZZ'), 400],
    ['unparsable request target, h2c upgrade', upgrade('//[', 'h2c'), 400],
    ['unparsable request target, websocket upgrade', upgrade('//[', 'websocket'), 400],
    // Finding 8: the API answered 500 with an error-level stack trace.
    ['malformed %-escape in an API path', 'GET /api/vms/%E0%A4%A HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', 400],
    ['malformed %-escape in a user path', 'DELETE /api/users/% HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', 400],
  ];
  for (const [name, request, status] of hostile) {
    const r = await rawRequest(gw.port, request, { ca: gw.caCert });
    t.equal(r.status, status, `${name}: ${status}`);
    r.socket.destroy();
  }
  const back = await echoRoundTrip(tunnel.socket, Buffer.from('still here'));
  t.equal(back.toString(), 'still here', 'the tunnel opened before still carries bytes');
  const health = await rawRequest(gw.port, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', { ca: gw.caCert });
  t.equal(health.status, 200, 'and the gateway still answers');
  t.same(gw.logs.filter((l) => l.level === 50 || l.level === 'error'), [], 'nothing was logged as an internal error');
  t.equal((await gw.ctx.metrics.internalErrors.get()).values.reduce((a, v) => a + v.value, 0), 0, 'no handler failed');
  tunnel.socket.end();
  await once(tunnel.socket, 'close');
});
