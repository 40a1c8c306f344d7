/**
 * Regression tests for the security review (issue 10), points 4, 6 and 9 and the small items
 * around them: login budgets that hold under concurrency and cannot lock a user out, resume tokens
 * that die with the session that minted them (also after a restart, embedded or Redis store), a
 * state folder that is never chmodded, the `__Host-` session cookie, a ticket issuance budget,
 * IPv6 budgets per /64, and `oneport user add --password-stdin`. Each fails without its fix.
 * Real gateway, real sockets on loopback, a real redis-server.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { OneportError } from '../../gateway/errors.js';
import { verifyPassword } from '../../gateway/auth/passwords.js';
import { RedisAuthStore } from '../../gateway/auth/redis-store.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { rawRequest, readResponse, startBackend, type RawConnectResult } from '../helpers/net.js';
import { startRedis } from '../helpers/redis.js';
import { setupDesk } from '../helpers/scenario.js';

function errorCode(body: string): string | undefined {
  try {
    return (JSON.parse(body) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

function post(path: string, body: unknown, headers: Record<string, string> = {}): string {
  const text = JSON.stringify(body);
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `POST ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n${extra}Connection: close\r\n\r\n${text}`;
}

const get = (path: string, token: string): string => `GET ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`;

/** A whole response (head and body), the connection closed. */
async function call(gw: TestGateway, request: string, localAddress?: string): Promise<RawConnectResult & { json: any }> {
  const r = await rawRequest(gw.port, request, { ca: gw.caCert, ...(localAddress ? { localAddress } : {}) });
  let text = r.body;
  if (r.status >= 200 && r.status < 300) {
    const chunks: Buffer[] = [r.rest];
    r.socket.resume();
    for await (const c of r.socket) chunks.push(c as Buffer);
    text = Buffer.concat(chunks).toString('utf8');
  }
  r.socket.destroy();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { ...r, body: text, json };
}

async function login(gw: TestGateway, user: string, password: string, localAddress?: string): Promise<{ token: string; cookie: string; head: string }> {
  const r = await call(gw, post('/api/login', { user, password }), localAddress);
  if (r.status !== 200) throw new Error(`login failed: ${r.status} ${r.body}`);
  const cookie = /\r\nSet-Cookie: ([^;\r]+)/i.exec(r.head)?.[1] ?? '';
  return { token: (r.json as { token: string }).token, cookie, head: r.head };
}

async function apiTicket(gw: TestGateway, token: string, vm = 'desk'): Promise<{ ticket: string; resume: string; connectWithTicket: string }> {
  const r = await call(gw, post(`/api/desktops/${vm}/tickets`, { protocol: 'vnc' }, { Authorization: `Bearer ${token}` }));
  if (r.status !== 200) throw new Error(`ticket failed: ${r.status} ${r.body}`);
  return r.json as { ticket: string; resume: string; connectWithTicket: string };
}

/** A tunnel over TLS with a resume token as its credential; the status (200, or the refusal). */
async function resumeTunnel(gw: TestGateway, resume: string, localAddress?: string): Promise<{ status: number; code: string | undefined }> {
  const r = await rawRequest(gw.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: Bearer ${resume}\r\n\r\n`, { ca: gw.caCert, ...(localAddress ? { localAddress } : {}) });
  r.socket.destroy();
  return { status: r.status, code: errorCode(r.body) };
}

/**
 * `requests` sent at the same moment on connections that are already open (TLS done), so they
 * reach the gateway together and race; the answers, in order.
 */
async function simultaneously(gw: TestGateway, requests: Array<{ request: string; localAddress?: string }>): Promise<RawConnectResult[]> {
  const sockets = requests.map(({ localAddress }) => {
    const s = tls.connect({ port: gw.port, host: '127.0.0.1', ca: gw.caCert, servername: 'localhost', ...(localAddress ? { localAddress } : {}) });
    s.on('error', () => {});
    return s;
  });
  await Promise.all(sockets.map((s) => once(s, 'secureConnect')));
  const answers = sockets.map((s) => readResponse(s, 30_000));
  sockets.forEach((s, i) => s.write(requests[i]!.request));
  const results = await Promise.all(answers);
  for (const s of sockets) s.destroy();
  return results;
}

async function passwordFailures(gw: TestGateway): Promise<number> {
  return (await gw.ctx.metrics.authFailures.get()).values.find((v) => v.labels.kind === 'password')?.value ?? 0;
}

// -------------------------------------------------------------------------------------------
// Point 9 and --password-stdin, as a user runs the command

const CLI = fileURLToPath(new URL('../../gateway/cli.ts', import.meta.url));

async function runCli(args: string[], stdin?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  p.stdin.end(stdin ?? '');
  const [code] = (await once(p, 'close')) as [number | null];
  return { code, stdout, stderr };
}

t.test('9: --state on an unsafe existing folder is refused and left as it was; a new one is created 0700', async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'oneport-state-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  const shared = join(base, 'shared');
  mkdirSync(shared);
  chmodSync(shared, 0o1777);
  const r = await runCli(['init', '--state', shared]);
  t.equal(r.code, 1, 'init exits 1');
  t.match(r.stderr, /state folder .*shared.* (group|world)-writable/i, `a clear message: ${r.stderr.trim()}`);
  t.equal(statSync(shared).mode & 0o7777, 0o1777, 'the folder was not chmodded');

  const fresh = join(base, 'new', 'state');
  const ok = await runCli(['init', '--state', fresh]);
  t.equal(ok.code, 0, ok.stderr);
  t.equal(statSync(fresh).mode & 0o777, 0o700, 'a new folder is created 0700');
});
