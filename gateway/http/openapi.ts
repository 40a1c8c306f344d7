/**
 * The JSON API (README "HTTP API") as an OpenAPI 3.1 document, served at GET /api/openapi.json.
 * test/integration/openapi.test.ts keeps it true: every route of api.ts is here, and real answers
 * of a real gateway validate against it (objects are closed: a new field must be added here).
 */
import { ERRORS } from '../errors.js';
import { PROTOCOLS, ROLES, VM_STATES } from '../directory/directory.js';
import { VERSION } from '../version.js';

const ref = (name: string): { $ref: string } => ({ $ref: `#/components/schemas/${name}` });
const str = { type: 'string' } as const;
const int = { type: 'integer', minimum: 0 } as const;
const bool = { type: 'boolean' } as const;
const time = { type: 'string', format: 'date-time' } as const;
const strings = { type: 'array', items: str } as const;

/** A closed object: every property listed, `optional` ones may be absent. */
function obj(properties: Record<string, unknown>, optional: readonly string[] = []): Record<string, unknown> {
  return { type: 'object', additionalProperties: false, required: Object.keys(properties).filter((k) => !optional.includes(k)), properties };
}

const json = (schema: unknown): Record<string, unknown> => ({ 'application/json': { schema } });
const answer = (description: string, schema: unknown): Record<string, unknown> => ({ description, content: json(schema) });
const errors = { default: { $ref: '#/components/responses/Error' } };

const PUBLIC: readonly unknown[] = [];
const SIGNED_IN = [{ bearer: [] }, { cookie: [] }];

interface Op {
  readonly summary: string;
  readonly tag: 'health' | 'session' | 'desktops' | 'cluster' | 'admin' | 'sessions';
  readonly security?: readonly unknown[];
  readonly params?: ReadonlyArray<Record<string, unknown>>;
  readonly body?: unknown;
  readonly ok: Record<string, unknown>;
  readonly leader?: boolean;
}

function op(o: Op): Record<string, unknown> {
  return {
    summary: o.summary,
    tags: [o.tag],
    security: o.security ?? SIGNED_IN,
    ...(o.params ? { parameters: o.params } : {}),
    ...(o.body !== undefined ? { requestBody: { required: true, content: json(o.body) } } : {}),
    responses: { ...o.ok, ...errors },
    ...(o.leader ? { 'x-oneport-leader': true } : {}),
  };
}

const pathParam = (name: string, description: string): Record<string, unknown> => ({ name, in: 'path', required: true, description, schema: { type: 'string', maxLength: 200 } });
const vmParam = pathParam('vm', 'VM name');
const userParam = pathParam('name', 'user name');
const localParam = { name: 'local', in: 'query', required: false, description: 'cluster nodes and the control socket only: this node\'s part', schema: { const: '1' } };

const schemas = {
  Error: obj({ error: obj({ code: { enum: Object.keys(ERRORS) }, message: str }) }),
  Ok: obj({ ok: { const: true } }),
  Protocol: { enum: [...PROTOCOLS] },
  Health: obj({ status: { const: 'ok' } }),
  Ready: obj(
    {
      status: { enum: ['ready', 'starting', 'shutting-down'] },
      directory: obj({ kind: { enum: ['embedded', 'redis'] }, version: int, connected: bool, stale: bool, ageSeconds: { type: 'number', minimum: 0 } }),
      cluster: obj({ node: str, leader: { oneOf: [obj({ node: str, epoch: int }), { type: 'null' }] } }),
    },
    ['cluster'],
  ),
  LoginRequest: obj({ user: { type: 'string', minLength: 1, maxLength: 64 }, password: { type: 'string', minLength: 1, maxLength: 1024 } }),
  Login: obj({ token: str, expiresAt: time }),
  User: obj({ name: str, roles: { type: 'array', items: { enum: [...ROLES] } }, groups: strings, maxSessions: int }, ['maxSessions']),
  UserInput: obj(
    {
      password: { type: 'string', minLength: 8, maxLength: 1024 },
      roles: { type: 'array', items: { enum: [...ROLES] } },
      groups: strings,
      maxSessions: { oneOf: [{ type: 'integer', minimum: 0, maximum: 100000 }, { type: 'null' }], description: 'null: back to limits.maxSessionsPerUser' },
    },
    ['password', 'roles', 'groups', 'maxSessions'],
  ),
  Desktop: obj({ vm: str, protocols: { type: 'array', items: ref('Protocol') }, state: { enum: [...VM_STATES] }, node: str, nativeRdp: bool }, ['nativeRdp']),
  TicketRequest: obj({ protocol: ref('Protocol') }, ['protocol']),
  AdminTicketRequest: obj({ user: str, vm: str, protocol: ref('Protocol') }, ['protocol']),
  JoinTokenRequest: obj({ node: str, ttlSeconds: int }, ['ttlSeconds']),
  JoinToken: obj({ token: str, node: str, expiresAt: str }),
  ClusterCa: obj({ ca: str, fingerprint: str }),
  JoinRequest: obj({ token: str, node: str, csr: str, names: strings }),
  JoinAnswer: obj({ ca: str, node: str, server: str, seal: str }),
  Ticket: obj({
    vm: str,
    protocol: ref('Protocol'),
    ticket: str,
    expiresAt: time,
    websocket: { type: 'string', pattern: '^/tunnel/' },
    connect: str,
    connectWithTicket: str,
    resume: str,
    resumeExpiresAt: time,
  }),
  SessionPolicy: obj({ maxSessionMs: int, idleTimeoutMs: int }, ['maxSessionMs', 'idleTimeoutMs']),
  Vm: obj(
    {
      name: str,
      node: str,
      replica: str,
      state: { enum: [...VM_STATES] },
      epoch: int,
      endpoints: { type: 'array', minItems: 1, items: obj({ protocol: ref('Protocol'), host: str, port: int, publishedPort: int, passwordSet: { const: true } }, ['passwordSet']) },
      users: strings,
      groups: strings,
      policy: { ...obj({ maxSessionMs: int, idleTimeoutMs: int, groups: { type: 'object', additionalProperties: ref('SessionPolicy') } }, ['maxSessionMs', 'idleTimeoutMs', 'groups']) },
      maxSessions: int,
      nativeRdp: bool,
      protocolCheck: bool,
    },
    ['replica', 'policy', 'maxSessions', 'nativeRdp', 'protocolCheck'],
  ),
  ConsolePassword: obj({ protocol: { enum: ['vnc', 'spice'] }, password: { oneOf: [{ type: 'string', minLength: 1, maxLength: 60 }, { type: 'null' }] } }),
  VmInput: {
    type: 'object',
    description: 'A VM record (name from the path); state, epoch, users, groups default; publishedPort defaults to the protocol\'s well-known port.',
    required: ['node', 'endpoints'],
    properties: {
      node: str,
      replica: str,
      state: { enum: [...VM_STATES] },
      epoch: int,
      endpoints: { type: 'array', minItems: 1, items: { type: 'object', required: ['protocol', 'host', 'port'], properties: { protocol: ref('Protocol'), host: str, port: int, publishedPort: int, password: { oneOf: [str, { type: 'null' }] } } } },
      users: strings,
      groups: strings,
      policy: { type: 'object' },
      maxSessions: int,
      nativeRdp: bool,
      protocolCheck: bool,
    },
  },
  Move: obj({ node: { type: 'string', minLength: 1, maxLength: 63 } }),
  DrainRequest: obj({ moveVms: bool }, ['moveVms']),
  Drain: obj({ node: str, draining: { const: true }, started: bool, tunnels: int, moveVms: bool }),
  Keys: obj({ current: int, previous: { type: 'array', items: int } }),
  ClusterNode: obj(
    {
      id: str,
      address: str,
      state: { enum: ['up', 'suspect', 'down', 'left'] },
      leader: bool,
      version: str,
      capacity: int,
      startedAt: time,
      tunnels: { type: ['integer', 'null'], minimum: 0 },
      heartbeatAgeMs: { type: ['number', 'null'], minimum: 0 },
      mirror: { oneOf: [obj({ version: int, ageMs: { type: 'number', minimum: 0 }, connected: bool }), { type: 'null' }] },
      unreachableBy: strings,
      downSince: time,
    },
    ['address', 'capacity', 'startedAt', 'tunnels', 'heartbeatAgeMs', 'unreachableBy', 'downSince'],
  ),
  Cluster: obj(
    {
      self: str,
      leader: { oneOf: [obj({ node: str, epoch: int }), { type: 'null' }] },
      highestEpoch: int,
      directory: obj({ kind: { enum: ['embedded', 'redis'] }, version: int, connected: bool, ageMs: { type: 'number', minimum: 0 } }),
      nodes: { type: 'array', items: ref('ClusterNode') },
    },
    ['highestEpoch'],
  ),
  Session: obj(
    {
      id: str,
      user: str,
      vm: str,
      protocol: ref('Protocol'),
      transport: { enum: ['connect', 'connect-tls', 'websocket', 'hop'] },
      entryNode: str,
      consoleNode: str,
      client: str,
      since: time,
      bytesToConsole: int,
      bytesToClient: int,
      session: str,
      parked: bool,
      expiresAt: time,
    },
    ['expiresAt'],
  ),
  NodeAnswer: obj({ node: str, state: str, answered: bool, sessions: int, ended: int, error: str }, ['sessions', 'ended', 'error']),
  Sessions: {
    oneOf: [
      obj({ sessions: { type: 'array', items: ref('Session') }, nodes: { type: 'array', items: ref('NodeAnswer') }, complete: bool }),
      { ...obj({ node: str, sessions: { type: 'array', items: ref('Session') } }), description: 'with local=1: this node\'s part' },
    ],
  },
  SessionEnded: obj({ id: str, node: str, user: str, vm: str, ended: int }),
  UserSessionsEnded: {
    oneOf: [
      obj({ user: str, ended: int, nodes: { type: 'array', items: ref('NodeAnswer') }, complete: bool }),
      { ...obj({ node: str, ended: int }), description: 'with local=1: this node\'s part' },
    ],
  },
};

export const OPENAPI = {
  openapi: '3.1.0',
  info: {
    title: 'oneport',
    version: VERSION,
    description: 'The JSON API on the one port (README "HTTP API"). Errors are {"error": {"code", "message"}} with the HTTP status of the code (README "Error codes"). Calls with a body need Content-Type: application/json. In a cluster, calls marked x-oneport-leader run on the leader (any node forwards them).',
    license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
  },
  servers: [{ url: '/' }],
  components: {
    securitySchemes: {
      bearer: { type: 'http', scheme: 'bearer', description: 'the token from POST /api/login' },
      cookie: { type: 'apiKey', in: 'cookie', name: '__Host-oneport_session' },
    },
    responses: { Error: answer('an error: the code says which (README "Error codes")', ref('Error')) },
    schemas,
  },
  paths: {
    '/healthz': { get: op({ summary: 'liveness', tag: 'health', security: PUBLIC, ok: { 200: answer('alive', ref('Health')) } }) },
    '/readyz': {
      get: op({ summary: 'readiness: 200 once listening (a stale mirror still routes), 503 while starting or stopping', tag: 'health', security: PUBLIC, ok: { 200: answer('ready', ref('Ready')), 503: answer('not ready', ref('Ready')) } }),
    },
    '/metrics': { get: op({ summary: 'Prometheus metrics (README "Observability")', tag: 'health', security: PUBLIC, ok: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: str } } } } }) },
    '/api/openapi.json': { get: op({ summary: 'this document', tag: 'health', security: PUBLIC, ok: { 200: answer('OpenAPI 3.1', { type: 'object', required: ['openapi', 'paths'] }) } }) },
    '/api/login': { post: op({ summary: 'log in (TLS only); also sets the __Host-oneport_session cookie', tag: 'session', security: PUBLIC, body: ref('LoginRequest'), ok: { 200: answer('a session token', ref('Login')) } }) },
    '/api/logout': { post: op({ summary: 'end the session, its tickets and resume tokens, and the tunnels they opened', tag: 'session', ok: { 200: answer('logged out', ref('Ok')) } }) },
    '/api/me': { get: op({ summary: 'the caller', tag: 'session', ok: { 200: answer('the caller', ref('User')) } }) },
    '/api/desktops': { get: op({ summary: 'the VMs assigned to the caller', tag: 'desktops', ok: { 200: answer('desktops', { type: 'array', items: ref('Desktop') }) } }) },
    '/api/desktops/{vm}/tickets': {
      post: op({ summary: 'a console ticket (single use, 60 s) and its resume token', tag: 'desktops', params: [vmParam], body: ref('TicketRequest'), ok: { 200: answer('a ticket', ref('Ticket')) } }),
    },
    '/api/desktops/{vm}/console.vv': {
      get: op({
        summary: 'a virt-viewer file for remote-viewer, with a fresh ticket',
        tag: 'desktops',
        params: [
          vmParam,
          { name: 'protocol', in: 'query', required: false, description: 'spice only: remote-viewer ignores the proxy for VNC (400)', schema: { enum: ['spice'], default: 'spice' } },
          { name: 'proxy', in: 'query', required: false, schema: { enum: ['http', 'https'], default: 'http' } },
        ],
        ok: { 200: { description: 'a .vv file', content: { 'application/x-virt-viewer': { schema: str } } } },
      }),
    },
    '/api/desktops/{vm}/console.rdp': {
      get: op({
        summary: 'an .rdp file for stock RDP clients, with a fresh ticket',
        tag: 'desktops',
        params: [vmParam, { name: 'variant', in: 'query', required: false, description: 'gateway: through the RD Gateway on this port; native: straight to the port (403 where native RDP is off)', schema: { enum: ['gateway', 'native'], default: 'gateway' } }],
        ok: { 200: { description: 'an .rdp file', content: { 'application/x-rdp': { schema: str } } } },
      }),
    },
    '/api/ca.pem': {
      get: op({
        summary: 'the CA of the certificate the gateway made itself (404 when tls.certificates is configured)',
        tag: 'health',
        security: PUBLIC,
        ok: { 200: { description: 'a PEM certificate', content: { 'application/x-pem-file': { schema: str } } } },
      }),
    },
    '/api/cluster/join-tokens': {
      post: op({ summary: 'admin: a one-time token for a new node to join with (README "Cluster setup")', tag: 'cluster', body: ref('JoinTokenRequest'), ok: { 200: answer('the token (shown once; only its hash is kept)', ref('JoinToken')) } }),
    },
    '/api/cluster/ca': {
      get: op({ summary: 'the cluster CA and its SHA-256 fingerprint (a joining node pins it from its token)', tag: 'cluster', security: PUBLIC, ok: { 200: answer('the CA', ref('ClusterCa')) } }),
    },
    '/api/cluster/join': {
      post: op({ summary: 'a joining node: its certificate request and join token, signed by a node holding the CA key', tag: 'cluster', security: PUBLIC, body: ref('JoinRequest'), ok: { 200: answer('the node and server certificates, the CA, the key ring seal', ref('JoinAnswer')) } }),
    },
    '/api/cluster': { get: op({ summary: 'admin: leader, nodes (with their addresses) and directory versions', tag: 'cluster', ok: { 200: answer('the cluster as this node sees it', ref('Cluster')) } }) },
    '/api/vms': { get: op({ summary: 'admin: every VM', tag: 'admin', ok: { 200: answer('VMs', { type: 'array', items: ref('Vm') }) } }) },
    '/api/vms/{vm}': {
      get: op({ summary: 'admin: one VM', tag: 'admin', params: [vmParam], ok: { 200: answer('the VM', ref('Vm')) } }),
      put: op({ summary: 'admin: add or replace a VM', tag: 'admin', params: [vmParam], body: ref('VmInput'), ok: { 200: answer('the VM as stored', ref('Vm')) }, leader: true }),
      delete: op({ summary: 'admin: remove a VM (its tunnels end)', tag: 'admin', params: [vmParam], ok: { 200: answer('removed', ref('Ok')) }, leader: true }),
    },
    '/api/vms/{vm}/console-password': {
      put: op({ summary: 'admin: set (a string) or clear (null) a VNC or SPICE endpoint\'s console password; never returned', tag: 'admin', params: [vmParam], body: ref('ConsolePassword'), ok: { 200: answer('the VM (passwordSet, never the password)', ref('Vm')) }, leader: true }),
    },
    '/api/vms/{vm}/move': { post: op({ summary: 'admin: planned migration to another node', tag: 'admin', params: [vmParam], body: ref('Move'), ok: { 200: answer('the VM, moved', ref('Vm')) }, leader: true }) },
    '/api/nodes/{node}/drain': {
      post: op({ summary: 'admin: drain a node (any node passes it on): unready, clients sent elsewhere, VMs moved if asked, then it stops', tag: 'cluster', params: [pathParam('node', 'node id')], body: ref('DrainRequest'), ok: { 202: answer('the drain started (or was already under way)', ref('Drain')) } }),
    },
    '/api/keys/rotate': { post: op({ summary: 'admin: new ticket signing key; the previous stays valid', tag: 'admin', ok: { 200: answer('key ids', ref('Keys')) }, leader: true }) },
    '/api/users': { get: op({ summary: 'admin: every user', tag: 'admin', ok: { 200: answer('users', { type: 'array', items: ref('User') }) } }) },
    '/api/users/{name}': {
      put: op({ summary: 'admin: add or change a user (a new password logs them out everywhere)', tag: 'admin', params: [userParam], body: ref('UserInput'), ok: { 200: answer('the user', ref('User')) }, leader: true }),
      delete: op({ summary: 'admin: remove a user (their tunnels end)', tag: 'admin', params: [userParam], ok: { 200: answer('removed', ref('Ok')) }, leader: true }),
    },
    '/api/tickets': { post: op({ summary: 'admin: a console ticket for a user', tag: 'admin', body: ref('AdminTicketRequest'), ok: { 200: answer('a ticket', ref('Ticket')) } }) },
    '/api/sessions': { get: op({ summary: 'admin: every live tunnel on every node', tag: 'sessions', params: [localParam], ok: { 200: answer('sessions, and which nodes answered', ref('Sessions')) } }) },
    '/api/sessions/{id}': {
      delete: op({ summary: 'admin: end a tunnel and the rest of its console session', tag: 'sessions', params: [pathParam('id', 'session id (GET /api/sessions)'), localParam], ok: { 200: answer('ended', ref('SessionEnded')) } }),
    },
    '/api/users/{name}/sessions': {
      delete: op({ summary: 'admin: end all of a user\'s sessions on every node', tag: 'sessions', params: [userParam, localParam], ok: { 200: answer('ended', ref('UserSessionsEnded')) } }),
    },
  },
} as const;
