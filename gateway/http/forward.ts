/**
 * A directory change that only the leader makes, received by a follower: the request goes to the
 * leader over node TLS and its answer comes back as it is. The leader checks the caller's
 * credentials itself (sessions are signed with the shared keys); the follower vouches only for
 * the client address and, for the local control socket, for the machine's administrator.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Dispatcher, request } from 'undici';
import { OneportError } from '../errors.js';
import { ACTING_HEADER, CLIENT_HEADER, FORWARDED_BY_HEADER } from '../cluster/peers.js';

/** What forwarding needs of the cluster: who leads, and a node-TLS dispatcher to reach it. */
export interface LeaderLink {
  readonly nodeId: string;
  /** The leader as a peer (waiting through an election); undefined when none is reachable. */
  leaderPeer(): Promise<{ node: string; address: string } | undefined>;
  readonly dispatcher: Dispatcher;
}

/** Request headers passed on to the leader; everything else stays here. */
const PASSED_ON = ['content-type', 'authorization', 'cookie', 'origin'];
/** Answer headers passed back to the client. */
const PASSED_BACK = ['content-type', 'retry-after'];

export async function forwardToLeader(link: LeaderLink, req: IncomingMessage, res: ServerResponse, opts: { local: boolean; client: string; body: Buffer; timeoutMs: number; target?: string }): Promise<void> {
  const leader = await link.leaderPeer();
  if (!leader) throw new OneportError('ONEPORT_ERR_NOT_LEADER', undefined, { retryAfter: 1 });
  const headers: Record<string, string> = { [FORWARDED_BY_HEADER]: link.nodeId, [CLIENT_HEADER]: opts.client };
  for (const h of PASSED_ON) {
    const v = req.headers[h];
    if (typeof v === 'string') headers[h] = v;
  }
  if (opts.local) headers[ACTING_HEADER] = 'local-admin';
  let upstream;
  try {
    upstream = await request(`https://${leader.address}${req.url ?? '/'}`, {
      method: (req.method ?? 'GET') as 'PUT',
      headers,
      body: opts.body.length ? opts.body : null,
      dispatcher: link.dispatcher,
      signal: AbortSignal.timeout(opts.timeoutMs),
    });
  } catch (err) {
    throw new OneportError('ONEPORT_ERR_NOT_LEADER', `${opts.target ?? 'the leader'} ${leader.node} did not answer; try again`, { retryAfter: 1, cause: err });
  }
  const text = await upstream.body.text();
  const out: Record<string, string> = { 'Cache-Control': 'no-store', 'Oneport-Leader': leader.node };
  for (const h of PASSED_BACK) {
    const v = upstream.headers[h];
    if (typeof v === 'string') out[h] = v;
  }
  res.writeHead(upstream.statusCode, out);
  res.end(text);
}
