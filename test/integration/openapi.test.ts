/**
 * GET /api/openapi.json (README "HTTP API") stays true: every route of the API router is in the
 * document and every documented operation is a route; and real calls to a real gateway (a live
 * tunnel included, so sessions are listed) answer what the document says, status, media type and
 * body, each body validated against the document's schema (zod's JSON Schema reader) as the
 * gateway serves it. Objects in the document are closed, so an undocumented field fails here.
 */
import { createNodeRequest } from '../../certs/ca.js';
import t, { type Test } from 'tap';
import { z } from 'zod';
import { apiRoutes } from '../../gateway/http/api.js';
import { setupDesk, clearConnect } from '../helpers/scenario.js';
import { apiClient, ok, type ApiResponse } from '../helpers/api.js';
import { rawRequest } from '../helpers/net.js';
import { startRedis } from '../helpers/redis.js';
import { startTestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/wait.js';

interface Operation {
  readonly responses: Record<string, { $ref?: string; content?: Record<string, { schema: unknown }> }>;
  readonly parameters?: ReadonlyArray<{ name: string; in: string }>;
}
interface Document {
  readonly openapi: string;
  readonly paths: Record<string, Record<string, Operation>>;
  readonly components: { schemas: Record<string, unknown>; responses: Record<string, { content: Record<string, { schema: unknown }> }> };
}

const METHODS = ['get', 'put', 'post', 'delete', 'patch'];

/** `/api/vms/{vm}` -> `/api/vms/:p`, the router's way of writing a parameter. */
const routerPath = (p: string): string => p.replace(/\{[^}]+\}/g, ':p');

/** Every ref into components.schemas rewritten for a stand-alone JSON Schema with $defs. */
function withDefs(doc: Document, schema: unknown): unknown {
  const text = JSON.stringify({ $defs: doc.components.schemas, ...(schema as object) });
  return JSON.parse(text.replaceAll('"#/components/schemas/', '"#/$defs/'));
}

/**
 * Checks answers against one document; remembers which operations were seen answering 2xx, and
 * which statuses each answered.
 */
class Checker {
  readonly answered = new Set<string>();
  private readonly compiled = new Map<string, z.ZodType>();
  constructor(private readonly doc: Document) {}

  check(t: Test, method: string, template: string, r: ApiResponse): void {
    const what = `${method} ${template} -> ${r.status}`;
    const op = this.doc.paths[template]?.[method.toLowerCase()];
    if (!op) {
      t.fail(`${what}: not in the document`);
      return;
    }
    let response = op.responses[String(r.status)] ?? op.responses.default;
    if (response?.$ref) response = this.doc.components.responses[response.$ref.split('/').pop()!];
    if (!response?.content) {
      t.fail(`${what}: no documented answer`);
      return;
    }
    const type = String(r.headers['content-type'] ?? '').split(';')[0]!.trim();
    const media = response.content[type];
    if (!media) {
      t.fail(`${what}: answered ${type}, documented ${Object.keys(response.content).join(', ')}`);
      return;
    }
    const key = `${method} ${template} ${r.status in op.responses ? r.status : 'default'} ${type}`;
    let schema = this.compiled.get(key);
    if (!schema) this.compiled.set(key, (schema = z.fromJSONSchema(withDefs(this.doc, media.schema) as Parameters<typeof z.fromJSONSchema>[0])));
    const parsed = schema.safeParse(r.body);
    t.ok(parsed.success, `${what} matches the document`, parsed.success ? {} : { issues: parsed.error.issues, body: r.body });
    if (r.status >= 200 && r.status < 300) this.answered.add(`${method.toLowerCase()} ${template}`);
  }
}

t.test('every route of the router is documented, and nothing else', async (t) => {
  const { gw } = await setupDesk(t);
  const api = apiClient(t, gw);
  const doc = ok(await api<Document>('GET', '/api/openapi.json'), 'openapi.json');
  t.equal(doc.openapi, '3.1.0');
  const documented = Object.entries(doc.paths)
    .flatMap(([p, ops]) => Object.keys(ops).filter((m) => METHODS.includes(m)).map((m) => `${m.toUpperCase()} ${routerPath(p)}`))
    .sort();
  const routed = [...new Set(apiRoutes().map((r) => `${r.method} ${r.path}`))].sort();
  t.same(routed.filter((r) => !documented.includes(r)), [], 'no route is missing from the document');
  t.same(documented.filter((d) => !routed.includes(d)), [], 'no documented operation is missing from the router');
  for (const r of apiRoutes().filter((x) => x.leader)) {
    const op = Object.entries(doc.paths).find(([p]) => routerPath(p) === r.path)?.[1][r.method.toLowerCase()] as Record<string, unknown> | undefined;
    t.equal(op?.['x-oneport-leader'], true, `${r.method} ${r.path} is marked as run by the leader`);
  }
});

t.test('real answers of a real gateway match the document', async (t) => {
  const { gw, echo } = await setupDesk(t);
  await gw.addVm('desk', [
    { protocol: 'vnc', host: '127.0.0.1', port: echo.port, publishedPort: 5900 },
    { protocol: 'spice', host: '127.0.0.1', port: echo.port, publishedPort: 5901 },
  ], ['alice']);
  await gw.addVm('win', [{ protocol: 'rdp', host: '127.0.0.1', port: echo.port }], ['alice']);
  await gw.addUser('root', 'root-password-1', { admin: true });
  const api = apiClient(t, gw);
  const doc = ok(await api<Document>('GET', '/api/openapi.json'), 'openapi.json');
  const c = new Checker(doc);
  /** Call, check against the document, return the answer. */
  const call = async (method: string, template: string, path: string, opts: Parameters<typeof api>[2] = {}): Promise<ApiResponse> => {
    const r = await api(method, path, opts);
    c.check(t, method, template, r);
    return r;
  };

  await call('GET', '/healthz', '/healthz');
  await call('GET', '/readyz', '/readyz');
  await call('GET', '/metrics', '/metrics');
  await call('GET', '/api/openapi.json', '/api/openapi.json');
  const alice = (await call('POST', '/api/login', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token as string;
  const root = (await call('POST', '/api/login', '/api/login', { body: { user: 'root', password: 'root-password-1' } })).body.token as string;
  await call('GET', '/api/me', '/api/me', { token: alice });
  await call('GET', '/api/desktops', '/api/desktops', { token: alice });
  const ticket = (await call('POST', '/api/desktops/{vm}/tickets', '/api/desktops/desk/tickets', { token: alice, body: { protocol: 'vnc' } })).body.ticket as string;
  await call('GET', '/api/desktops/{vm}/console.vv', '/api/desktops/desk/console.vv?protocol=spice', { token: alice });
  await call('GET', '/api/desktops/{vm}/console.rdp', '/api/desktops/win/console.rdp?variant=native', { token: alice });
  await call('GET', '/api/cluster', '/api/cluster', { token: alice }); // 403: admins only
  await call('GET', '/api/cluster', '/api/cluster', { token: root });
  await call('GET', '/api/ca.pem', '/api/ca.pem');

  // A live tunnel, so the session list has a session in it.
  const tunnel = await rawRequest(gw.port, clearConnect(ticket));
  t.teardown(() => tunnel.socket.destroy());
  t.equal(tunnel.status, 200, 'tunnel open');
  const sessions = (await call('GET', '/api/sessions', '/api/sessions', { token: root })).body.sessions as Array<{ id: string }>;
  t.equal(sessions.length, 1, 'the live tunnel is listed');

  await call('PUT', '/api/vms/{vm}/console-password', '/api/vms/desk/console-password', { token: root, body: { protocol: 'spice', password: 'console-secret' } });
  await call('GET', '/api/vms/{vm}', '/api/vms/desk', { token: root }); // with passwordSet
  await call('PUT', '/api/vms/{vm}/console-password', '/api/vms/desk/console-password', { token: root, body: { protocol: 'spice', password: null } });
  await call('GET', '/api/vms', '/api/vms', { token: root });
  await call('GET', '/api/vms/{vm}', '/api/vms/desk', { token: root });
  await call('PUT', '/api/vms/{vm}', '/api/vms/desk2', {
    token: root,
    body: { node: 'test', endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: echo.port }], users: ['alice'], policy: { maxSessionMs: 3_600_000, groups: { staff: { idleTimeoutMs: 0 } } }, maxSessions: 2 },
  });
  await call('POST', '/api/vms/{vm}/move', '/api/vms/desk2/move', { token: root, body: { node: 'test' } });
  await call('DELETE', '/api/vms/{vm}', '/api/vms/desk2', { token: root });
  await call('POST', '/api/keys/rotate', '/api/keys/rotate', { token: root });
  await call('PUT', '/api/users/{name}', '/api/users/bob', { token: root, body: { password: 'bob-password-1', groups: ['staff'], maxSessions: 3 } });
  await call('GET', '/api/users', '/api/users', { token: root });
  await call('POST', '/api/tickets', '/api/tickets', { token: root, body: { user: 'alice', vm: 'desk', protocol: 'spice' } });
  await call('DELETE', '/api/users/{name}', '/api/users/bob', { token: root });
  await call('DELETE', '/api/sessions/{id}', `/api/sessions/${encodeURIComponent(sessions[0]!.id)}`, { token: root });
  await call('DELETE', '/api/users/{name}/sessions', '/api/users/alice/sessions', { token: root });
  await call('POST', '/api/logout', '/api/logout', { token: alice });

  // Errors answer the documented error shape.
  await call('GET', '/api/me', '/api/me');
  await call('GET', '/api/me', '/api/me', { token: alice }); // logged out
  await call('GET', '/api/vms', '/api/vms', { token: 'x' });
  await call('POST', '/api/login', '/api/login', { body: { user: 'alice' } });
  await call('GET', '/api/vms/{vm}', '/api/vms/nowhere', { token: root });
  await call('PUT', '/api/users/{name}', '/api/users/bob', { token: root, body: '{"password":' });
  await call('GET', '/api/sessions', '/api/sessions?local=1', { token: root });
  await call('POST', '/api/nodes/{node}/drain', '/api/nodes/elsewhere/drain', { token: root, body: {} });
  // Last: the node drains and stops.
  await call('POST', '/api/nodes/{node}/drain', '/api/nodes/test/drain', { token: root, body: { moveVms: false } });

  const operations = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).filter((m) => METHODS.includes(m)).map((m) => `${m} ${p}`));
  // Joining exists only in a cluster: the next test sees those answer.
  const clusterOnly = ['post /api/cluster/join-tokens', 'get /api/cluster/ca', 'post /api/cluster/join'];
  t.same(operations.filter((o) => !c.answered.has(o) && !clusterOnly.includes(o)).sort(), [], 'every documented operation was seen answering 200');
});

t.test('a cluster node answers /readyz and /api/cluster as documented', async (t) => {
  const redis = await startRedis(t);
  const gw = await startTestGateway(t, { cluster: { redis: redis.url } });
  await until(() => gw.ctx.cluster?.isLeader() === true, { what: 'the only node leads' });
  await gw.addUser('root', 'root-password-1', { admin: true });
  const api = apiClient(t, gw);
  const doc = ok(await api<Document>('GET', '/api/openapi.json'), 'openapi.json');
  const c = new Checker(doc);
  const ready = await api('GET', '/readyz');
  c.check(t, 'GET', '/readyz', ready);
  t.ok(ready.body.cluster, 'with the cluster part');
  const token = ok(await api('POST', '/api/login', { body: { user: 'root', password: 'root-password-1' } })).token as string;
  const cluster = await api('GET', '/api/cluster', { token });
  c.check(t, 'GET', '/api/cluster', cluster);
  t.equal(cluster.body.directory.kind, 'redis');
  t.ok(cluster.body.nodes.length >= 1 && 'startedAt' in cluster.body.nodes[0], 'with the cluster\'s own node fields');
  const minted = await api('POST', '/api/cluster/join-tokens', { token, body: { node: 'n2' } });
  c.check(t, 'POST', '/api/cluster/join-tokens', minted);
  c.check(t, 'GET', '/api/cluster/ca', await api('GET', '/api/cluster/ca'));
  const joined = await api('POST', '/api/cluster/join', { body: { token: minted.body.token, node: 'n2', csr: createNodeRequest('n2').csr, names: ['localhost'] } });
  c.check(t, 'POST', '/api/cluster/join', joined);
  t.same(['post /api/cluster/join-tokens', 'get /api/cluster/ca', 'post /api/cluster/join'].filter((o) => !c.answered.has(o)), [], 'the cluster-only operations answered 200');
});
