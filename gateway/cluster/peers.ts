/**
 * Node to node, over the one port with mutual TLS: every node holds a node certificate (CN = node
 * id, OU = oneport-node) from the cluster CA, and trusts a peer only if the peer's certificate
 * chains to that CA and is a node certificate. Used for
 * - the hop: a tunnel that arrives at node A for a VM owned by node B becomes
 *   `CONNECT <vm>:<port>` + `Oneport-Hop: A` from A to B, and B dials the console locally;
 * - forwarding directory changes from a follower to the leader (undici, same identity);
 * - checking whether a silent node's port still answers (failure confirmation).
 */
import tls from 'node:tls';
import type { X509Certificate } from 'node:crypto';
import type net from 'node:net';
import { Agent, request } from 'undici';
import { NODE_OU } from '../../certs/ca.js';
import type { Pem } from '../../certs/ca.js';
import { OneportError } from '../errors.js';
import { ReachFailure } from '../tunnel/failures.js';
import type { ReachedConsole } from '../tunnel/reach.js';
import { parseHostPort } from '../hostport.js';

/** On forwarded API calls: the node that forwarded it, the client's address, the acting identity. */
export const FORWARDED_BY_HEADER = 'oneport-forwarded-by';
export const CLIENT_HEADER = 'oneport-client';
export const ACTING_HEADER = 'oneport-acting';
/** The SNI name a node asks for: the answering node then presents its node certificate. */
export const NODE_SERVERNAME = 'oneport-node';

export interface NodeIdentity {
  readonly nodeId: string;
  readonly ca: string;
  readonly cert: Pem;
}

/**
 * The node id of the peer's certificate on `socket` when it is a node certificate issued by the
 * cluster CA and valid now; else undefined. Checked here, explicitly: a TLSSocket made by hand
 * (listener.ts) does not fill in `authorized`.
 */
export function peerNodeId(socket: net.Socket, ca: X509Certificate): string | undefined {
  if (!(socket instanceof tls.TLSSocket)) return undefined;
  const peer = socket.getPeerX509Certificate();
  if (!peer) return undefined;
  const now = Date.now();
  if (now < Date.parse(peer.validFrom) || now > Date.parse(peer.validTo)) return undefined;
  if (!peer.checkIssued(ca) || !peer.verify(ca.publicKey)) return undefined;
  const subject = peer.subject.split('\n');
  if (!subject.includes(`OU=${NODE_OU}`)) return undefined;
  const cn = subject.find((l) => l.startsWith('CN='))?.slice(3);
  return cn && cn.length > 0 ? cn : undefined;
}

/** Accept a server certificate only if it is the expected node's (CA already checked by TLS). */
export function checkNode(expected: string | undefined) {
  return (_host: string, cert: tls.PeerCertificate): Error | undefined => {
    const ou = cert.subject?.OU;
    const isNode = Array.isArray(ou) ? ou.includes(NODE_OU) : ou === NODE_OU;
    if (!isNode) return new Error('peer is not a oneport node');
    if (expected !== undefined && cert.subject.CN !== expected) return new Error(`peer is node ${cert.subject.CN}, expected ${expected}`);
    return undefined;
  };
}

/** A node's advertised `host:port` (IPv6 bracketed), as dialled. */
export function splitAddress(address: string): { host: string; port: number } {
  const parsed = parseHostPort(address);
  if (!parsed) throw new Error(`bad node address ${address}`);
  return parsed;
}

export class Peers {
  readonly agent: Agent;

  constructor(private readonly id: NodeIdentity, private readonly timeoutMs: number) {
    this.agent = new Agent({
      connect: {
        ca: id.ca,
        cert: id.cert.cert,
        key: id.cert.key,
        // Peers are dialled by address; identity is the node certificate, checked below.
        servername: NODE_SERVERNAME,
        checkServerIdentity: checkNode(undefined),
        timeout: timeoutMs,
      },
      headersTimeout: timeoutMs * 4,
      bodyTimeout: timeoutMs * 4,
      keepAliveTimeout: 10_000,
    });
  }

  /** TLS to a peer's one port, presenting our node certificate. */
  connect(address: string, nodeId: string, signal: AbortSignal, timeoutMs = this.timeoutMs): Promise<tls.TLSSocket> {
    const { host, port } = splitAddress(address);
    return new Promise((resolve, reject) => {
      const s = tls.connect({
        host,
        port,
        ca: this.id.ca,
        cert: this.id.cert.cert,
        key: this.id.cert.key,
        servername: NODE_SERVERNAME,
        checkServerIdentity: checkNode(nodeId),
        ALPNProtocols: ['http/1.1'],
      });
      const fail = (err: Error): void => {
        cleanup();
        s.destroy();
        reject(err);
      };
      const onAbort = (): void => fail(new Error('aborted'));
      const timer = setTimeout(() => fail(new Error(`node ${nodeId} at ${address}: no TLS within ${timeoutMs} ms`)), timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        s.removeListener('error', fail);
      };
      s.on('error', fail);
      signal.addEventListener('abort', onAbort, { once: true });
      s.once('secureConnect', () => {
        cleanup();
        s.on('error', () => s.destroy());
        resolve(s);
      });
    });
  }

  /**
   * The hop: CONNECT through node `nodeId` to the VM's console. Resolves with the raw tunnel
   * socket once the owner answered 200 (and how many of the socket's bytes were the hop's own
   * request and answer); an owner's refusal becomes a coded failure here.
   */
  async hop(address: string, nodeId: string, req: { vm: string; protocol: string; port: number; user: string; epoch: number }, signal: AbortSignal, timeoutMs: number): Promise<ReachedConsole> {
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
    let s: tls.TLSSocket;
    try {
      s = await this.connect(address, nodeId, deadline, timeoutMs);
    } catch (err) {
      if (signal.aborted) throw new ReachFailure('CLIENT_GONE', { cause: err });
      throw new ReachFailure('OWNER_SILENT', { message: `the VM's node ${nodeId} did not answer`, cause: err });
    }
    const request =
      `CONNECT ${req.vm}:${req.port} HTTP/1.1\r\nHost: ${req.vm}:${req.port}\r\nDesktop-Protocol: ${req.protocol}\r\n` +
      `Oneport-Hop: ${this.id.nodeId}\r\nOneport-User: ${req.user}\r\nOneport-Epoch: ${req.epoch}\r\n\r\n`;
    s.write(request);
    const status = await readStatus(s, deadline).catch((err: Error) => {
      s.destroy();
      if (signal.aborted) throw new ReachFailure('CLIENT_GONE', { cause: err });
      throw new ReachFailure('HOP_CLOSED', { message: `the VM's node ${nodeId} did not answer the hop`, cause: err });
    });
    if (status.code === 200) return { socket: s, preface: { written: Buffer.byteLength(request), read: status.headBytes } };
    s.destroy();
    if (status.code === 503) {
      if (status.error === 'ONEPORT_ERR_VM_DOWN') throw new OneportError('ONEPORT_ERR_VM_DOWN', undefined, { retryAfter: 5 });
      throw new ReachFailure('OWNER_MOVING', { code: 'ONEPORT_ERR_VM_RECOVERING', retryAfter: 5 });
    }
    if (status.code === 404) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    throw new ReachFailure('HOP_STATUS', { message: `node ${nodeId} answered ${status.code}` });
  }

  /** Does the node's port answer a TLS handshake and /healthz within the deadline? */
  async probe(address: string, timeoutMs: number): Promise<boolean> {
    const signal = AbortSignal.timeout(timeoutMs);
    const answered = (async () => {
      const res = await request(`https://${address}/healthz`, { dispatcher: this.agent, signal, headers: { [FORWARDED_BY_HEADER]: this.id.nodeId } });
      await res.body.dump();
      return res.statusCode === 200;
    })().catch(() => false);
    // undici does not abort a request still in its connect phase: a paused (SIGSTOP) or
    // partitioned node whose kernel accepts the TCP connection would hold the probe for the
    // agent's connect timeout (tunnel.dialTimeoutMs), not `timeoutMs`. The deadline is ours.
    const silent = new Promise<false>((resolve) => signal.addEventListener('abort', () => resolve(false), { once: true }));
    return Promise.race([answered, silent]);
  }

  close(): Promise<void> {
    return this.agent.close();
  }
}

const MAX_RESPONSE_HEAD = 4096;

/**
 * Read an HTTP response head from a hop (bounded, under the deadline), leaving any bytes after it
 * in the socket. Returns the status and the ONEPORT_ERR code when the owner sent one.
 */
function readStatus(s: tls.TLSSocket, signal: AbortSignal): Promise<{ code: number; error: string | undefined; headBytes: number }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const done = (err: Error | undefined, v?: { code: number; error: string | undefined; headBytes: number }): void => {
      s.removeListener('data', onData);
      s.removeListener('close', onClose);
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(v!);
    };
    const onAbort = (): void => done(new Error('timed out'));
    const onClose = (): void => done(new Error('closed before answering'));
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > MAX_RESPONSE_HEAD) done(new Error('response head too large'));
        return;
      }
      s.pause();
      const head = buf.subarray(0, end).toString('latin1');
      const rest = buf.subarray(end + 4);
      const code = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
      const error = /^oneport-error:\s*(\S+)/im.exec(head)?.[1];
      done(undefined, { code, error, headBytes: end + 4 });
      if (rest.length && code === 200) s.unshift(rest);
    };
    s.on('data', onData);
    s.once('close', onClose);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
