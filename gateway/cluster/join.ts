/**
 * Joining the cluster with a one-time token, so the CA key stays on the nodes that sign.
 *
 * `oneport cluster join-token <node>` (any node) mints `opj1.<CA fingerprint>.<secret>`: the
 * SHA-256 of the cluster CA's certificate and 32 random bytes, both base64url. Redis keeps only
 * the secret's SHA-256 (`<prefix>join:<hash>`, the node id it is for, PX = its lifetime), so
 * reading Redis does not give the token away.
 *
 * The new node, started with the token (file or environment, never argv), makes its own key and a
 * certificate request (CN = its node id), finds a live node in Redis (nodes that sign first), and
 * over that node's one port:
 * 1. fetches the CA certificate (`GET /api/cluster/ca`, no trust needed yet) and keeps it only if
 *    its SHA-256 is the token's;
 * 2. opens TLS trusting that CA alone, asking for the node certificate (SNI `oneport-node`): the
 *    answering node must prove it is a node of that cluster before the token is sent;
 * 3. posts `{token, node, csr, names}` to `POST /api/cluster/join`.
 * A node that signs (it holds `ca-key.pem`) checks the token's fingerprint, the request (signature,
 * CN = node, RSA key size), that no node of that id is alive, then redeems the token (GETDEL: read
 * and deleted in one command, so it serves once) and checks it was minted for that node id; then
 * it signs a node certificate and a server certificate for the request's key and returns them
 * with the CA certificate and the key ring's seal key (seal.ts). A node without the CA key forwards the call, once, to the leader when
 * the leader signs, else to the first live node that does. Calls are rate-limited per client
 * address, bounded in size, audited (`node.join`), and the token is never logged.
 */
import { createHash, createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { z } from 'zod';
import { type Pem, NodeRequestError, certificateFingerprint, createNodeRequest, readNodeRequest, signNodeRequest } from '../../certs/ca.js';
import { addressKey } from '../address.js';
import type { Audit } from '../audit.js';
import { AttemptLimiter } from '../auth/limits.js';
import { OneportError } from '../errors.js';
import type { Logger } from '../log.js';
import { redisCallError } from '../directory/redis.js';
import { type CaPem, heldNodeCert, prepareStateFolder, saveJoinedIdentity, statePaths } from '../state.js';
import type { NodeInfo } from './membership.js';
import { sealKeyFromCa } from './seal.js';
import { NODE_SERVERNAME, checkNode } from './peers.js';

const TOKEN_PREFIX = 'opj1';
const TOKEN = /^opj1\.([A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43})$/;
/** Longest text read as a token (it is 92 characters). */
export const MAX_JOIN_TOKEN_CHARS = 128;
/** Join tokens live this long unless asked otherwise, and at most a day. */
export const DEFAULT_JOIN_TTL_MS = 3600_000; // 1 hour
export const MAX_JOIN_TTL_MS = 24 * 3600_000; // 1 day
/** The largest answer a joining node reads (the CA, or the CA and two certificates). */
const MAX_ANSWER_BYTES = 65536;

export interface JoinToken {
  /** SHA-256 of the cluster CA certificate's DER, lower-case hex. */
  readonly fingerprint: string;
  readonly secret: Buffer;
}

export function formatJoinToken(token: JoinToken): string {
  return `${TOKEN_PREFIX}.${Buffer.from(token.fingerprint, 'hex').toString('base64url')}.${token.secret.toString('base64url')}`;
}

/** The token in `text` (surrounding white space allowed, e.g. a file's newline), or undefined. */
export function parseJoinToken(text: string): JoinToken | undefined {
  if (typeof text !== 'string' || text.length > MAX_JOIN_TOKEN_CHARS) return undefined;
  const m = TOKEN.exec(text.trim());
  if (!m) return undefined;
  const fingerprint = Buffer.from(m[1]!, 'base64url');
  const secret = Buffer.from(m[2]!, 'base64url');
  if (fingerprint.length !== 32 || secret.length !== 32) return undefined;
  const token = { fingerprint: fingerprint.toString('hex'), secret };
  // One spelling per token: the last base64url character carries unused bits that must be zero.
  return formatJoinToken(token) === text.trim() ? token : undefined;
}

/** What Redis keeps of a token: the SHA-256 of its secret, hex. */
export function joinTokenHash(secret: Buffer): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** A new token for the cluster whose CA certificate is `caCert`, and the hash to store. */
export function mintJoinToken(caCert: string): { token: string; hash: string } {
  const secret = randomBytes(32);
  return { token: formatJoinToken({ fingerprint: certificateFingerprint(caCert), secret }), hash: joinTokenHash(secret) };
}

export interface JoinRecord {
  /** The node id the token was minted for. */
  readonly node: string;
  /** Who minted it (an admin's name, or local-admin). */
  readonly by: string;
  readonly expiresAt: number;
}

/** Minted tokens in Redis, by hash: stored with their lifetime, redeemed once. */
export class JoinTokens {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  key(hash: string): string {
    return `${this.prefix}join:${hash}`;
  }

  async put(hash: string, record: JoinRecord, ttlMs: number): Promise<void> {
    const ok = await this.call('store a join token', () => this.redis.set(this.key(hash), JSON.stringify(record), 'PX', ttlMs, 'NX'));
    if (ok !== 'OK') throw new Error('join token hash collision');
  }

  /** The token's record, deleted in the same command: of two redeemers, at most one gets it. */
  async redeem(hash: string): Promise<JoinRecord | undefined> {
    const raw = await this.call('redeem a join token', () => this.redis.getdel(this.key(hash)));
    if (raw === null) return undefined;
    try {
      const r = JSON.parse(raw) as Partial<JoinRecord>;
      return typeof r.node === 'string' && typeof r.by === 'string' && typeof r.expiresAt === 'number' ? (r as JoinRecord) : undefined;
    } catch {
      return undefined;
    }
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw redisCallError(`cluster: ${what}`, 'Redis', err);
    }
  }
}

export const joinRequestSchema = z
  .object({
    token: z.string().min(1).max(MAX_JOIN_TOKEN_CHARS),
    node: z.string().min(1).max(64),
    csr: z.string().min(1).max(8192),
    names: z.array(z.string().min(1).max(253)).min(1).max(16),
  })
  .strict();
export type JoinRequest = z.infer<typeof joinRequestSchema>;

export interface JoinAnswer {
  readonly ca: string;
  readonly node: string;
  readonly server: string;
  /** The key ring's seal key (cluster/seal.ts), base64. */
  readonly seal: string;
}

export interface JoinServiceDeps {
  readonly tokens: JoinTokens;
  readonly ca: CaPem;
  readonly nodeId: string;
  /** Is node `id` alive now (a heartbeat in Redis)? A token never takes over a live node's id. */
  readonly isAlive: (id: string) => Promise<boolean>;
  readonly log: Logger;
  readonly audit: Audit;
  /** Join calls one client address may make per minute (IPv6: per /64; limits.joinsPerAddressPerMinute). */
  readonly perAddressPerMinute: number;
}

/** This node's side of joining: minting tokens, and signing requests when it holds the CA key. */
export class JoinService {
  readonly fingerprint: string;
  private readonly limiter: AttemptLimiter;

  constructor(private readonly deps: JoinServiceDeps) {
    this.fingerprint = certificateFingerprint(deps.ca.cert);
    this.limiter = new AttemptLimiter(deps.perAddressPerMinute);
  }

  /** This node holds the CA key: it signs join requests itself. */
  get signer(): boolean {
    return this.deps.ca.key !== undefined;
  }

  get caCert(): string {
    return this.deps.ca.cert;
  }

  /** Count one join call from `client`; throws ONEPORT_ERR_RATE_LIMITED beyond the budget. */
  limit(client: string): Promise<void> {
    return this.limiter.take(`join:${addressKey(client)}`);
  }

  async mint(node: string, ttlMs: number, by: string): Promise<{ token: string; node: string; expiresAt: number }> {
    const { token, hash } = mintJoinToken(this.deps.ca.cert);
    const expiresAt = Date.now() + ttlMs;
    await this.deps.tokens.put(hash, { node, by, expiresAt }, ttlMs);
    this.deps.log.info({ event: 'join-token-minted', node, by, expiresAt: new Date(expiresAt).toISOString() }, `join token minted for node ${node}`);
    return { token, node, expiresAt };
  }

  /** Check and redeem a join request, and sign it (this node must be a signer). */
  async sign(req: JoinRequest, client: string, forwardedBy: string | undefined): Promise<JoinAnswer> {
    const key = this.deps.ca.key;
    if (key === undefined) throw new OneportError('ONEPORT_ERR_INTERNAL', 'this node holds no CA key');
    const refuse = (reason: string, err: OneportError): never => {
      this.deps.log.warn({ event: 'join-refused', node: req.node, client, forwardedBy, reason }, `join of node ${JSON.stringify(req.node)} refused: ${reason}`);
      this.record(req.node, client, forwardedBy, 'refused', reason);
      throw err;
    };
    const token = parseJoinToken(req.token);
    const forbidden = (): OneportError => new OneportError('ONEPORT_ERR_FORBIDDEN', 'join token invalid, expired or already used');
    if (!token) return refuse('malformed token', forbidden());
    if (token.fingerprint !== this.fingerprint) return refuse('token for another cluster CA', forbidden());
    let checked;
    try {
      checked = readNodeRequest(req.csr, req.node);
    } catch (e) {
      if (e instanceof NodeRequestError) return refuse(e.message, new OneportError('ONEPORT_ERR_VALIDATION', e.message));
      throw e;
    }
    const alive = await this.deps.isAlive(req.node).catch((err: unknown) => {
      throw redisCallError('cluster: join', 'Redis', err);
    });
    if (alive) return refuse('a node with that id is alive', new OneportError('ONEPORT_ERR_CONFLICT', `node ${req.node} is alive: a join token never takes over a running node's id`));
    const record = await this.deps.tokens.redeem(joinTokenHash(token.secret));
    if (!record || record.expiresAt < Date.now()) return refuse('unknown, expired or used token', forbidden());
    if (record.node !== req.node) return refuse(`token minted for node ${JSON.stringify(record.node)}`, forbidden());
    let signed: { node: string; server: string };
    try {
      signed = signNodeRequest({ cert: this.deps.ca.cert, key } satisfies Pem, checked, req.names);
    } catch (e) {
      if (e instanceof NodeRequestError) return refuse(e.message, new OneportError('ONEPORT_ERR_VALIDATION', e.message));
      throw e;
    }
    this.deps.log.info({ event: 'node-joined', node: req.node, client, forwardedBy, mintedBy: record.by }, `node ${req.node} joined: node certificate issued`);
    this.record(req.node, client, forwardedBy, 'signed', undefined);
    return { ca: this.deps.ca.cert, node: signed.node, server: signed.server, seal: sealKeyFromCa(key).toString('base64') };
  }

  private record(node: string, client: string, forwardedBy: string | undefined, result: 'signed' | 'refused', reason: string | undefined): void {
    this.deps.audit.record({
      kind: 'admin',
      time: new Date().toISOString(),
      node: this.deps.nodeId,
      actor: 'join-token',
      via: 'api',
      ...(forwardedBy !== undefined ? { forwardedBy } : {}),
      client,
      action: 'node.join',
      target: { type: 'node', name: node },
      details: { result, ...(reason !== undefined ? { reason } : {}) },
    });
  }
}

/** The node to pass a join call to: the leader if it signs, else the first live signer by id. */
export function signerPeer(nodes: ReadonlyArray<{ readonly info: NodeInfo; readonly state: string }>, leader: string | undefined, self: string): { node: string; address: string } | undefined {
  const signers = nodes.filter((p) => p.info.signer === true && p.state === 'up' && p.info.id !== self).sort((a, b) => a.info.id.localeCompare(b.info.id));
  const pick = signers.find((p) => p.info.id === leader) ?? signers[0];
  return pick ? { node: pick.info.id, address: pick.info.address } : undefined;
}

// ---------------------------------------------------------------------------------------------
// The joining node

export interface JoinOptions {
  readonly root: string;
  readonly nodeId: string;
  /** Names for the server and node certificates (config.serverNames). */
  readonly names: readonly string[];
  readonly token: string;
  /** A connected Redis connection (the nodes' addresses are read from it). */
  readonly redis: Redis;
  readonly prefix: string;
  readonly timeoutMs: number;
  readonly log: Logger;
}

/**
 * At start: join with the token unless this node already signs (holds the CA key) or holds a
 * valid node certificate of the CA. Writes ca.pem, node.pem, server.pem and their key.
 */
export async function joinIfNeeded(opts: JoinOptions): Promise<void> {
  const token = parseJoinToken(opts.token);
  if (!token) throw new Error('the join token is malformed (expected opj1.<fingerprint>.<secret>, from `oneport cluster join-token`)');
  prepareStateFolder(opts.root);
  const paths = statePaths(opts.root);
  if (existsSync(paths.caKey)) {
    opts.log.info({ event: 'join-token-unused' }, 'this node holds the cluster CA key: join token not used');
    return;
  }
  if (existsSync(paths.caCert) && heldNodeCert(paths, readFileSync(paths.caCert, 'utf8'), opts.nodeId)?.fresh) {
    opts.log.info({ event: 'join-token-unused' }, 'this node already holds a node certificate: join token not used');
    return;
  }
  const joined = await joinCluster(token, opts);
  saveJoinedIdentity(paths, joined);
  opts.log.info({ event: 'joined', node: opts.nodeId, via: joined.via }, `joined the cluster through node ${joined.via}: certificates saved in ${opts.root}`);
}

async function joinCluster(token: JoinToken, opts: JoinOptions): Promise<JoinAnswer & { key: string; via: string }> {
  const peers = await liveNodes(opts.redis, opts.prefix, opts.nodeId);
  if (peers.length === 0) throw new Error('cannot join: no live node of the cluster is registered in Redis');
  const { csr, key } = createNodeRequest(opts.nodeId);
  const body = JSON.stringify({ token: formatJoinToken(token), node: opts.nodeId, csr, names: [...opts.names] } satisfies JoinRequest);
  const errors: string[] = [];
  for (const p of peers) {
    let answer: JoinAnswer;
    try {
      const ca = await fetchCa(p.address, token.fingerprint, opts.timeoutMs);
      answer = await postJoin(p.address, ca, body, opts.timeoutMs);
      if (answer.ca !== ca) throw new Error('answered with another CA');
    } catch (err) {
      // A refusal is final (the token may be spent); an unreachable node is not.
      if (err instanceof JoinRefused) throw new Error(`cannot join: node ${p.id} refused: ${err.message}`);
      errors.push(`${p.id}: ${(err as Error).message}`);
      continue;
    }
    checkAnswer(answer, key, opts.nodeId);
    return { ...answer, key, via: p.id };
  }
  throw new Error(`cannot join: no node answered (${errors.join('; ')})`);
}

/** Registered nodes with a heartbeat, nodes that sign first. */
async function liveNodes(redis: Redis, prefix: string, self: string): Promise<NodeInfo[]> {
  const all = await redis.hgetall(`${prefix}nodes`);
  const out: NodeInfo[] = [];
  for (const [id, json] of Object.entries(all)) {
    if (id === self) continue;
    let info: NodeInfo;
    try {
      info = JSON.parse(json) as NodeInfo;
    } catch {
      continue;
    }
    if (typeof info.address !== 'string' || (await redis.exists(`${prefix}alive:${id}`)) === 0) continue;
    out.push(info);
  }
  return out.sort((a, b) => Number(b.signer === true) - Number(a.signer === true) || a.id.localeCompare(b.id));
}

class JoinRefused extends Error {}

/** The CA certificate a node serves, kept only if it is the one the token pins. */
async function fetchCa(address: string, fingerprint: string, timeoutMs: number): Promise<string> {
  // No trust yet: whatever answers is checked against the token's fingerprint below.
  const agent = new Agent({ connect: { rejectUnauthorized: false, servername: NODE_SERVERNAME, timeout: timeoutMs } });
  try {
    const body = await call(agent, address, 'GET', '/api/cluster/ca', undefined, timeoutMs);
    const ca = (body as { ca?: unknown }).ca;
    if (typeof ca !== 'string') throw new Error('no CA certificate in the answer');
    if (certificateFingerprint(ca) !== fingerprint) throw new Error('its CA is not the one the token names');
    return ca;
  } finally {
    await agent.close();
  }
}

/** The join call, over TLS that trusts the pinned CA alone and wants a node certificate. */
async function postJoin(address: string, ca: string, body: string, timeoutMs: number): Promise<JoinAnswer> {
  const agent = new Agent({ connect: { ca, servername: NODE_SERVERNAME, checkServerIdentity: checkNode(undefined), timeout: timeoutMs } });
  try {
    const answer = (await call(agent, address, 'POST', '/api/cluster/join', body, timeoutMs)) as Partial<JoinAnswer>;
    if (typeof answer.ca !== 'string' || typeof answer.node !== 'string' || typeof answer.server !== 'string' || typeof answer.seal !== 'string') throw new Error('malformed answer');
    return answer as JoinAnswer;
  } finally {
    await agent.close();
  }
}

async function call(agent: Agent, address: string, method: 'GET' | 'POST', path: string, body: string | undefined, timeoutMs: number): Promise<unknown> {
  const res = await request(`https://${address}${path}`, {
    method,
    dispatcher: agent,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body ?? null,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += (chunk as Buffer).length;
    if (size > MAX_ANSWER_BYTES) {
      res.body.destroy();
      throw new Error('answer too large');
    }
    chunks.push(chunk as Buffer);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new Error(`answered ${res.statusCode} without JSON`);
  }
  if (res.statusCode >= 400 && res.statusCode < 500 && res.statusCode !== 429) {
    const e = (parsed as { error?: { code?: string; message?: string } }).error;
    throw new JoinRefused(`${res.statusCode} ${e?.code ?? ''} ${e?.message ?? ''}`.trim());
  }
  if (res.statusCode !== 200) throw new Error(`answered ${res.statusCode}`);
  return parsed;
}

/** The certificates are the CA's, for this node, and for the key made here. */
function checkAnswer(a: JoinAnswer, key: string, nodeId: string): void {
  const ca = new X509Certificate(a.ca);
  const priv = createPrivateKey(key);
  for (const [what, pem] of [['node', a.node], ['server', a.server]] as const) {
    const x = new X509Certificate(pem);
    if (!x.checkIssued(ca) || !x.verify(ca.publicKey)) throw new Error(`cannot join: the ${what} certificate is not from the cluster CA`);
    if (!x.checkPrivateKey(priv)) throw new Error(`cannot join: the ${what} certificate is not for this node's key`);
  }
  if (!new X509Certificate(a.node).subject.split('\n').includes(`CN=${nodeId}`)) throw new Error('cannot join: the node certificate is for another node id');
  if (Buffer.from(a.seal, 'base64').length !== 32) throw new Error('cannot join: malformed seal key');
}
