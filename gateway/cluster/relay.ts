/**
 * The client of a session held on another node came back here: open the same resume request on
 * the holder, over node TLS (the holder must present that node's certificate), and relay messages
 * both ways (text stays text, binary binary). The holder checks the resume token and attaches.
 */
import { WebSocket } from 'ws';
import { OneportError } from '../errors.js';
import type { Logger } from '../log.js';
import { FORWARDED_BY_HEADER, NODE_SERVERNAME, checkNode, type NodeIdentity } from './peers.js';

export interface RelayDeps {
  readonly identity: NodeIdentity;
  readonly handshakeTimeoutMs: number;
  readonly log: Logger;
  /** The holder's address when it is an up member. */
  peerAddress(node: string): string | undefined;
}

/** Close codes a peer cannot send on the wire: a leg that just dropped is told 1011. */
const safeCode = (c: number): number => (c === 1005 || c === 1006 || c === 1015 ? 1011 : c);

export async function relayResume(deps: RelayDeps, holder: string, client: WebSocket, vm: string, protocol: string, q: { resume: string; session: string; received: number }, queued: readonly Buffer[]): Promise<void> {
  const address = deps.peerAddress(holder);
  if (!address) throw new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `the node holding the session (${holder}) is not reachable`);
  const { identity } = deps;
  const url = `wss://${address}/tunnel/${encodeURIComponent(vm)}/${protocol}?resume=${encodeURIComponent(q.resume)}&session=${encodeURIComponent(q.session)}&received=${q.received}`;
  const upstream = new WebSocket(url, ['oneport.v1'], {
    ca: identity.ca,
    cert: identity.cert.cert,
    key: identity.cert.key,
    // Passed through to tls.connect (not in ws's types): ask for the holder's node certificate.
    ...({ servername: NODE_SERVERNAME } as object),
    // ws types this hook as boolean-returning; TLS wants Error | undefined: the holder must be that node.
    checkServerIdentity: checkNode(holder) as never,
    handshakeTimeout: deps.handshakeTimeoutMs,
    headers: { [FORWARDED_BY_HEADER]: identity.nodeId },
  });
  await joinRelay(upstream, client, queued, () => new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `node ${holder} refused the relay`));
  deps.log.info({ event: 'session-relayed', vm, session: q.session, holder }, `resumed session on ${vm} relayed to ${holder}`);
}

/**
 * Once `upstream` (the leg to the holder: another node, or another worker of this node) opens,
 * relay messages both ways; rejects with `refused()` if it closes first. Shared by the relay to a
 * node and to a worker (workers/worker.ts).
 */
export async function joinRelay(upstream: WebSocket, client: WebSocket, queued: readonly Buffer[], refused: () => Error): Promise<void> {
  upstream.on('error', () => upstream.terminate());
  // Before 'open' is awaited: the holder's first message (the hello) can come in the same read
  // as the handshake's answer, so in the same tick as 'open'; a listener added after the await
  // would miss it.
  upstream.on('message', (d: Buffer, isBinary: boolean) => client.readyState === WebSocket.OPEN && client.send(d, { binary: isBinary }));
  await new Promise<void>((resolve, reject) => {
    upstream.once('open', () => resolve());
    upstream.once('close', () => reject(refused()));
  });
  for (const b of queued) upstream.send(b, { binary: true });
  client.on('message', (d: Buffer, isBinary: boolean) => upstream.readyState === WebSocket.OPEN && upstream.send(d, { binary: isBinary }));
  upstream.on('close', (code: number, reason: Buffer) => client.readyState === WebSocket.OPEN && client.close(safeCode(code), reason.toString()));
  // The client's leg dropping must look the same to the holder: not a clean 1000 unless it was.
  client.on('close', (code: number) => (code === 1000 || code === 1001 ? upstream.close(code) : upstream.terminate()));
}
