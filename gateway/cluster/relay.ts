/**
 * `oneport.v1` sessions are held next to their console, at the VM's owner (README "Transparent
 * resume"): the node a client enters opens the same WebSocket request on the node holding the
 * session, over node TLS (it must present that node's certificate), and relays messages both ways
 * (tunnel/relays.ts). A new session goes to the VM's owner, a resumed one to the node Redis names.
 * The holder checks the credential (ticket, resume token, cookie) itself; it believes the client
 * address this node passes on (`oneport-client`) because the request comes with a node certificate.
 * The entry node keeps nothing, so losing it (a drain, a crash) costs the client a reconnect
 * through another node, and the console never notices.
 */
import { WebSocket } from 'ws';
import { OneportError } from '../errors.js';
import type { Logger } from '../log.js';
import { keepAlive } from '../tunnel/legs/websocket.js';
import { Relay, type RelayOptions, type RelayRequest, type Relays } from '../tunnel/relays.js';
import { CLIENT_HEADER, FORWARDED_BY_HEADER, NODE_SERVERNAME, checkNode, type NodeIdentity } from './peers.js';

export interface RelayDeps {
  readonly identity: NodeIdentity;
  readonly handshakeTimeoutMs: number;
  readonly pingIntervalMs: number;
  readonly log: Logger;
  readonly relays: Relays;
  /** The holder's address when it is an up member. */
  peerAddress(node: string): string | undefined;
  /** Does the holder still answer (its side dropped: a network fault, or its death)? */
  holderAlive(node: string): Promise<boolean>;
  /** The 4001 text for a client whose session went with its holder: reconnect fresh. */
  goneMessage(): string;
}

/**
 * Open `r` on `holder` and relay `client` to it. Rejects (ONEPORT_ERR_CONSOLE_UNREACHABLE) when the
 * holder cannot be reached or does not upgrade; once it did, the holder's answers (its close
 * codes included) are the client's.
 */
export async function relayTo(deps: RelayDeps, holder: string, client: WebSocket, r: RelayRequest): Promise<Relay> {
  const address = deps.peerAddress(holder);
  if (!address) throw new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `the node holding the session (${holder}) is not reachable`);
  // A drain that starts meanwhile waits for it, then hands it over like the others.
  const release = deps.relays.opened();
  try {
    return await open(deps, address, holder, client, r);
  } finally {
    release();
  }
}

async function open(deps: RelayDeps, address: string, holder: string, client: WebSocket, r: RelayRequest): Promise<Relay> {
  const { identity } = deps;
  const upstream = new WebSocket(`wss://${address}${r.path}`, ['oneport.v1'], {
    ca: identity.ca,
    cert: identity.cert.cert,
    key: identity.cert.key,
    // Passed through to tls.connect (not in ws's types): ask for the holder's node certificate.
    ...({ servername: NODE_SERVERNAME } as object),
    // ws types this hook as boolean-returning; TLS wants Error | undefined: the holder must be that node.
    checkServerIdentity: checkNode(holder) as never,
    handshakeTimeout: deps.handshakeTimeoutMs,
    perMessageDeflate: false,
    headers: { [FORWARDED_BY_HEADER]: identity.nodeId, [CLIENT_HEADER]: r.client, ...(r.cookie !== undefined ? { cookie: r.cookie } : {}) },
  });
  const relay = await spliceToHolder(upstream, client, holder, r, { vmAt: r.vmAt, holderAlive: () => deps.holderAlive(holder), goneMessage: deps.goneMessage }, () => new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `node ${holder} did not take the relay`));
  deps.relays.add(relay);
  void relay.done.then((end) => deps.log.info({ event: 'relay-closed', vm: r.vm, holder, client: r.client, end }, `oneport.v1 relay of ${r.vm} to ${holder} ended (${end})`));
  // Both sides are pinged: a client gone silent, or a holder hung, ends the relay (the holder parks).
  keepAlive(client, deps.pingIntervalMs);
  keepAlive(upstream, deps.pingIntervalMs);
  deps.log.info({ event: 'session-relayed', vm: r.vm, holder, client: r.client }, `oneport.v1 leg on ${r.vm} relayed to ${holder}`);
  return relay;
}

/**
 * Once `upstream` (the leg to the holder: another node, or another worker of this node) opens,
 * relay `client` to it (tunnel/relays.ts); rejects with `refused()` if it closes first, or when the
 * client leaves meanwhile. What the holder sends before the relay is set up is kept and passed on
 * first: its hello can come in the same read as the handshake's answer, so before a continuation
 * awaiting 'open' runs. Shared by the relay to a node and to a worker (workers/worker.ts).
 */
export async function spliceToHolder(
  upstream: WebSocket,
  client: WebSocket,
  holder: string,
  r: Pick<RelayRequest, 'vm' | 'queued'>,
  opts: RelayOptions,
  refused: () => Error,
): Promise<Relay> {
  upstream.on('error', () => upstream.terminate());
  const early: Array<[Buffer, boolean]> = [];
  const keep = (d: Buffer, isBinary: boolean): void => void early.push([d, isBinary]);
  upstream.on('message', keep);
  // The client leaving while the holder is dialled: give up the dial.
  const gone = (): void => upstream.terminate();
  client.once('close', gone);
  try {
    await new Promise<void>((resolve, reject) => {
      upstream.once('open', () => resolve());
      upstream.once('close', () => reject(refused()));
    });
  } finally {
    client.removeListener('close', gone);
  }
  if (client.readyState !== WebSocket.OPEN) {
    upstream.terminate();
    throw new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', 'the client left');
  }
  for (const b of r.queued ?? []) upstream.send(b, { binary: true });
  const relay = new Relay(client, upstream, holder, r.vm, opts);
  upstream.removeListener('message', keep);
  for (const [d, isBinary] of early) client.send(d, { binary: isBinary });
  return relay;
}
