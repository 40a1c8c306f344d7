/**
 * The JSON API (CONTRACT section 5) over real TLS: login, cookie, desktops, tickets, admin
 * changes, health, metrics; errors with codes.
 */
import t from 'tap';
import { startTestGateway } from '../helpers/gateway.js';
import { startBackend, rawRequest } from '../helpers/net.js';
import { apiClient } from '../helpers/api.js';

t.test('login, session cookie, desktops, tickets that work, logout', async (t) => {
  const gw = await startTestGateway(t);
  const echo = await startBackend(t);
  await gw.addUser('alice', 'alice-password-1');
  await gw.addVm('desk', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }, { protocol: 'spice', host: '127.0.0.1', port: echo.port, publishedPort: 5901 }], ['alice']);
  await gw.addVm('hidden', [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], ['bob']);
  const api = apiClient(t, gw);

  const bad = await api('POST', '/api/login', { body: { user: 'alice', password: 'wrong' } });
  t.equal(bad.status, 401);
  t.equal(bad.body.error.code, 'ONEPORT_ERR_BAD_CREDENTIALS');
  const unknown = await api('POST', '/api/login', { body: { user: 'nobody', password: 'wrong' } });
  t.same(unknown.body, bad.body, 'unknown user and wrong password look the same');

  const login = await api('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
  t.equal(login.status, 200);
  t.type(login.body.token, 'string');
  t.ok(Date.parse(login.body.expiresAt) > Date.now());
  const setCookie = String(login.headers['set-cookie']);
  for (const attr of ['__Host-oneport_session=', 'HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/']) t.match(setCookie, attr, `cookie has ${attr}`);
  const cookie = setCookie.split(';')[0] ?? '';

  const desktops = await api('GET', '/api/desktops', { cookie });
  t.same(desktops.body, [{ vm: 'desk', protocols: ['vnc', 'spice'], state: 'running', node: 'test' }], 'only assigned desktops');
  t.same((await api('GET', '/api/desktops', { token: login.body.token })).body, desktops.body, 'Bearer works too');

  const ticket = await api('POST', '/api/desktops/desk/tickets', { token: login.body.token, body: { protocol: 'vnc' } });
  t.equal(ticket.status, 200);
  t.match(ticket.body, { vm: 'desk', protocol: 'vnc', ticket: /^[a-z2-7]{50}$/, connect: 'desk:5900', websocket: /^\/tunnel\/desk\/vnc\?ticket=/, resume: /^v1\./ });
  t.ok(Date.parse(ticket.body.expiresAt) - Date.now() <= 60_000, 'tickets live at most 60 s');
  const tunnel = await rawRequest(gw.port, `CONNECT ${ticket.body.connectWithTicket} HTTP/1.1\r\n\r\n`);
  t.equal(tunnel.status, 200, 'the ticket opens a tunnel');
  tunnel.socket.destroy();

  t.equal((await api('POST', '/api/desktops/hidden/tickets', { token: login.body.token, body: {} })).status, 403, 'not assigned');
  t.equal((await api('POST', '/api/desktops/nosuch/tickets', { token: login.body.token, body: {} })).status, 404);
  t.equal((await api('POST', '/api/desktops/desk/tickets', { token: login.body.token, body: { protocol: 'rdp' } })).status, 404, 'no rdp endpoint');
  t.equal((await api('POST', '/api/desktops/desk/tickets', { token: login.body.token, body: { protocol: 'x' } })).status, 400);
  const form = await api('POST', '/api/desktops/desk/tickets', { cookie, body: 'protocol=vnc', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
  t.equal(form.status, 400, 'a form post (cross-site) is refused');

  const vv = await api('GET', '/api/desktops/desk/console.vv?protocol=spice', { cookie });
  t.equal(vv.status, 200);
  t.match(vv.headers['content-type'], 'application/x-virt-viewer');
  t.match(vv.body, /\[virt-viewer\][\s\S]*type=spice[\s\S]*host=[a-z2-7]{50}\.desk[\s\S]*port=5901[\s\S]*proxy=http:\/\/localhost:/);
  const vvs = await api('GET', '/api/desktops/desk/console.vv?protocol=spice&proxy=https', { cookie });
  t.match(vvs.body, /proxy=https:\/\/localhost:/, 'proxy=https on request');
  const vvBad = await api('GET', '/api/desktops/desk/console.vv?protocol=spice&proxy=ftp', { cookie });
  t.equal(vvBad.status, 400, 'any other proxy scheme: 400');
  t.equal(vvBad.body.error.code, 'ONEPORT_ERR_VALIDATION');
  // remote-viewer ignores proxy= for VNC and would look `<ticket>.<vm>` up in DNS: no VNC .vv at all.
  const vvVnc = await api('GET', '/api/desktops/desk/console.vv?protocol=vnc', { cookie });
  t.equal(vvVnc.status, 400, 'no .vv for VNC');
  t.match(vvVnc.body.error.message, /remote-viewer ignores the proxy for VNC/);
  const vvHost = await rawRequest(gw.port, `GET /api/desktops/desk/console.vv?protocol=spice HTTP/1.1\r\nHost: evil.example/x\r\nCookie: ${cookie}\r\nConnection: close\r\n\r\n`, { ca: gw.caCert });
  t.match(vvHost.head, /^HTTP\/1\.1 200/);
  const vvChunks: Buffer[] = [vvHost.rest];
  for await (const c of vvHost.socket) vvChunks.push(c as Buffer);
  const vvText = Buffer.concat(vvChunks).toString();
  t.match(vvText, /proxy=http:\/\/localhost\r?\n/, 'a Host header that is not a plain host[:port] is replaced by the first server name');
  t.notMatch(vvText, /evil/);

  t.equal((await api('POST', '/api/logout', { cookie })).status, 200);
  const after = await api('GET', '/api/desktops', { cookie });
  t.equal(after.status, 401, 'the session is revoked');
  t.equal(after.body.error.code, 'ONEPORT_ERR_SESSION_INVALID');
  t.equal((await api('GET', '/api/desktops', { token: login.body.token })).status, 401, 'the token too');
  t.notOk(gw.logText().includes(login.body.token), 'tokens never reach the logs');
  t.notOk(gw.logText().includes(ticket.body.ticket), 'tickets never reach the logs');
});

t.test('errors have codes; unknown routes and methods', async (t) => {
  const gw = await startTestGateway(t);
  const api = apiClient(t, gw);
  const none = await api('GET', '/api/desktops');
  t.equal(none.status, 401);
  t.equal(none.body.error.code, 'ONEPORT_ERR_AUTH_REQUIRED');
  t.equal((await api('GET', '/api/desktops', { token: 'v1.garbage.x' })).status, 401);
  const missing = await api('GET', '/no/such/thing');
  t.equal(missing.status, 404);
  t.equal(missing.body.error.code, 'ONEPORT_ERR_NOT_FOUND');
  const method = await api('DELETE', '/api/login');
  t.equal(method.status, 405);
  t.equal(method.headers.allow, 'POST');
  t.equal((await api('POST', '/api/login', { body: '{not json' })).status, 400);
  t.equal((await api('POST', '/api/login', { body: { user: 'a', password: 'b', extra: 1 } })).status, 400, 'unknown fields refused');
  const big = await api('POST', '/api/login', { body: { user: 'a', password: 'x'.repeat(100_000) } });
  t.equal(big.status, 413);
});

t.test('admin API: users and VMs, admin only', async (t) => {
  const gw = await startTestGateway(t);
  await gw.addUser('root', 'root-password-1', { admin: true });
  await gw.addUser('alice', 'alice-password-1');
  const api = apiClient(t, gw);
  const adminToken = (await api('POST', '/api/login', { body: { user: 'root', password: 'root-password-1' } })).body.token;
  const aliceToken = (await api('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;

  const put = await api('PUT', '/api/vms/new-vm', { token: adminToken, body: { node: 'test', endpoints: [{ protocol: 'spice', host: '127.0.0.1', port: 5930 }], users: ['alice'] } });
  t.equal(put.status, 200);
  t.equal(put.body.endpoints[0].publishedPort, 5900, 'published port defaults to the well-known one');
  t.equal((await api('PUT', '/api/vms/new-vm', { token: aliceToken, body: {} })).status, 403, 'users cannot change the directory');
  const badVm = await api('PUT', '/api/vms/127.0.0.1', { token: adminToken, body: { node: 'test', endpoints: [{ protocol: 'vnc', host: 'h', port: 1 }] } });
  t.equal(badVm.status, 400, 'a VM cannot be named like an address');
  t.same((await api('GET', '/api/desktops', { token: aliceToken })).body.map((d: { vm: string }) => d.vm), ['new-vm']);
  const moved = await api('POST', '/api/vms/new-vm/move', { token: adminToken, body: { node: 'n2' } });
  t.equal(moved.body.node, 'n2');
  t.equal(moved.body.epoch, 1);
  t.equal((await api('PUT', '/api/users/carol', { token: adminToken, body: { password: 'carol-password-1' } })).status, 200);
  t.equal((await api('POST', '/api/login', { body: { user: 'carol', password: 'carol-password-1' } })).status, 200);
  t.equal((await api('PUT', '/api/users/alice', { token: adminToken, body: { password: 'alice-password-2' } })).status, 200);
  t.equal((await api('GET', '/api/desktops', { token: aliceToken })).status, 401, 'a new password logs the user out everywhere');
  t.equal((await api('DELETE', '/api/vms/new-vm', { token: adminToken })).status, 200);
  t.equal((await api('DELETE', '/api/vms/new-vm', { token: adminToken })).status, 404);
  const users = await api('GET', '/api/users', { token: adminToken });
  t.notOk(JSON.stringify(users.body).includes('scrypt'), 'password hashes are never served');
});

t.test('health, readiness, metrics, cluster', async (t) => {
  const gw = await startTestGateway(t);
  const api = apiClient(t, gw);
  t.same((await api('GET', '/healthz')).body, { status: 'ok' });
  const ready = await api('GET', '/readyz');
  t.equal(ready.status, 200);
  t.equal(ready.body.status, 'ready');
  const metrics = await api('GET', '/metrics');
  t.match(metrics.headers['content-type'], 'text/plain');
  for (const name of ['oneport_connections_active', 'oneport_tunnel_setup_seconds', 'oneport_process_cpu_user_seconds_total']) {
    t.match(metrics.body, name, `${name} exported`);
  }
  await gw.addUser('alice', 'alice-password-1');
  const token = (await api('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const refused = await api('GET', '/api/cluster', { token });
  t.equal(refused.status, 403, 'node addresses are for admins only');
  t.equal(refused.body.error.code, 'ONEPORT_ERR_ADMIN_ONLY');
  await gw.addUser('root', 'root-password-1', { admin: true });
  const adminToken = (await api('POST', '/api/login', { body: { user: 'root', password: 'root-password-1' } })).body.token;
  const cluster = await api('GET', '/api/cluster', { token: adminToken });
  t.match(cluster.body, { leader: { node: 'test', epoch: 1 }, nodes: [{ id: 'test', state: 'up' }] });
  // The CA of the certificate it made itself is public: clients that verify the gateway need it.
  const ca = await api('GET', '/api/ca.pem');
  t.equal(ca.status, 200, 'no login needed');
  t.equal(String(ca.body).trim(), gw.caCert.trim(), 'the CA that signed the served certificate');
});

t.test('clear text: GET is redirected to https, other methods get 400, login refused', async (t) => {
  const gw = await startTestGateway(t);
  const get = await rawRequest(gw.port, `GET /api/desktops?x=1 HTTP/1.1\r\nHost: localhost:${gw.port}\r\n\r\n`);
  t.equal(get.status, 301);
  t.match(get.head, `Location: https://localhost:${gw.port}/api/desktops?x=1`);
  const post = await rawRequest(gw.port, 'POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}');
  t.equal(post.status, 400);
  const evilHost = await rawRequest(gw.port, 'GET / HTTP/1.1\r\nHost: evil.example/<script>\r\n\r\n');
  t.equal(evilHost.status, 301);
  t.notMatch(evilHost.head, 'evil.example', 'an odd Host header is not echoed into the redirect');
});

t.test('the portal is served with its types, caching and CSP', async (t) => {
  const gw = await startTestGateway(t);
  const api = apiClient(t, gw);
  const index = await api('GET', '/');
  t.equal(index.status, 200);
  t.match(index.headers['content-type'], 'text/html');
  t.match(index.headers['content-security-policy'], "default-src 'self'");
  t.equal(index.headers['cache-control'], 'no-cache');
  const js = await api('GET', '/portal.js');
  t.match(js.headers['content-type'], 'text/javascript');
  const again = await api('GET', '/portal.js', { headers: { 'if-none-match': String(js.headers.etag) } });
  t.equal(again.status, 304);
  t.equal((await api('GET', '/../package.json')).status, 404, 'no way out of web/');
});
