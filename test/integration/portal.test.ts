/**
 * The portal's static files over the real port: web/, and the browser clients shipped from npm
 * under fixed prefixes (noVNC, spice-html5, IronRDP), with types, caching, CSP and no way out of them.
 */
import t from 'tap';
import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { startTestGateway } from '../helpers/gateway.js';
import { rawRequest } from '../helpers/net.js';
import { Portal, vendorMounts } from '../../gateway/http/portal.js';

t.test('noVNC and spice-html5 are served from node_modules under fixed prefixes', async (t) => {
  const gw = await startTestGateway(t);
  const dispatcher = new Agent({ connect: { ca: gw.caCert, servername: 'localhost' } });
  t.teardown(() => dispatcher.close());
  const get = async (path: string, headers: Record<string, string> = {}) => {
    const r = await request(`https://localhost:${gw.port}${path}`, { dispatcher, headers });
    return { status: r.statusCode, headers: r.headers, text: await r.body.text() };
  };
  for (const path of ['/vendor/novnc/core/rfb.js', '/vendor/novnc/vendor/pako/lib/zlib/inflate.js', '/vendor/spice-html5/src/main.js']) {
    const r = await get(path);
    t.equal(r.status, 200, path);
    t.equal(r.headers['content-type'], 'text/javascript; charset=utf-8', `${path}: a JavaScript module`);
    t.match(r.headers['content-security-policy'], "script-src 'self'");
    t.equal(r.headers['x-content-type-options'], 'nosniff');
    t.equal(r.headers['cache-control'], 'public, max-age=3600');
    t.ok(r.headers.etag);
    t.equal((await get(path, { 'if-none-match': `"other", ${String(r.headers.etag)}` })).status, 304, `${path} revalidates`);
  }
  for (const page of ['/', '/viewer.html']) {
    const r = await get(page);
    t.equal(r.status, 200);
    t.equal(r.headers['cache-control'], 'no-cache', `${page} always revalidates`);
    const csp = String(r.headers['content-security-policy']);
    t.match(csp, "connect-src 'self'");
    // The viewer runs IronRDP: WebAssembly may be compiled there, and nothing else is relaxed.
    if (page === '/viewer.html') t.match(csp, "script-src 'self' 'wasm-unsafe-eval';", 'the viewer may compile WebAssembly');
    else t.notMatch(csp, 'wasm', 'other pages may not compile WebAssembly');
    t.notMatch(csp.replace("'wasm-unsafe-eval'", ''), 'unsafe', 'no unsafe-inline, no unsafe-eval');
  }
  const ironrdp = await get('/vendor/ironrdp/iron-remote-desktop-rdp.js');
  t.equal(ironrdp.status, 200, 'IronRDP\'s WebAssembly RDP client is served');
  t.equal(ironrdp.headers['content-type'], 'text/javascript; charset=utf-8');
  t.equal((await get('/vendor/ironrdp/package.json')).status, 404, 'only the module, not its package.json');
  t.equal((await get('/vendor/ironrdp/index.d.ts')).status, 404, 'nor its type declarations');
  t.equal((await get('/vendor/novnc/package.json')).status, 404, 'only core/ and vendor/ of noVNC');
  t.equal((await get('/vendor/spice-html5/spice.html')).status, 404, 'only src/ of spice-html5');
  t.equal(
    (await get('/vendor/spice-html5/src/thirdparty/browser-es-module-loader/dist/babel-worker.js')).status,
    404,
    'not the eval-based module loader polyfill',
  );
  for (const evil of ['/vendor/novnc/../../package.json', '/vendor/novnc/core/../../../package.json', '/vendor/novnc/%2e%2e/%2e%2e/package.json', '/vendor/novnc/core/..%2f..%2fpackage.json', '/vendor//novnc/core/rfb.js']) {
    const r = await rawRequest(gw.port, `GET ${evil} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`, { ca: gw.caCert }).catch(() => undefined);
    if (r) t.not(r.status, 200, `${evil} is not served`);
    const viaUndici = await get(evil).catch(() => undefined);
    if (viaUndici) t.not(viaUndici.status, 200, `${evil} is not served`);
  }
});

t.test('a Portal serves only what it loaded at start-up: files added or linked later do not appear', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'oneport-web-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  writeFileSync(join(root, 'index.html'), '<!doctype html><title>x</title>');
  writeFileSync(join(root, 'notes.txt'), 'not a served type');
  mkdirSync(join(root, 'sub'));
  writeFileSync(join(root, 'sub', 'a.js'), 'export {}');
  const portal = new Portal(root, vendorMounts());
  writeFileSync(join(root, 'late.js'), 'export {}');
  symlinkSync('/etc', join(root, 'etc'));
  const paths = portal.paths();
  t.ok(paths.includes('/'));
  t.ok(paths.includes('/sub/a.js'));
  t.notOk(paths.includes('/late.js'));
  t.notOk(paths.includes('/notes.txt'));
  t.notOk(paths.some((p) => p.startsWith('/etc')));
  t.ok(paths.includes('/vendor/novnc/core/rfb.js'));
  t.notOk(paths.some((p) => p.includes('..')));
});
