/**
 * The RDCleanPath entrance (README "RDP in the browser"): `wss://<gateway>/rdcleanpath/<vm>`, the
 * WebSocket IronRDP's web client opens as its "proxy address". Its first PDU carries the console
 * ticket (or the resume token of one) as proxy_auth; the VM is the one in the path, its RDP console
 * the one in the directory (the PDU's destination is ignored). The leg (tunnel/legs/rdcleanpath.ts)
 * reads and checks the request and speaks X.224 and TLS with the console; the broker does the rest.
 */
import type { WebSocket } from 'ws';
import type { GatewayContext } from '../context.js';
import { isToken } from '../tunnel/authorize.js';
import { openTunnel, refuseTunnel } from '../tunnel/broker.js';
import { RdcleanpathLeg } from '../tunnel/legs/rdcleanpath.js';
import type { Credential } from '../tunnel/request.js';

export interface RdcleanpathUpgrade {
  readonly vmName: string;
  /** The portal's session cookie, if the browser sent one: a resume token must be its user's. */
  readonly cookie: string | undefined;
  readonly client: string;
  readonly acceptedAt: bigint;
}

export async function runRdcleanpath(ctx: GatewayContext, ws: WebSocket, r: RdcleanpathUpgrade): Promise<void> {
  const { tunnel, limits, http } = ctx.config;
  const leg = new RdcleanpathLeg(ws, {
    client: r.client,
    acceptedAt: r.acceptedAt,
    pingIntervalMs: tunnel.wsPingIntervalMs,
    rerouteRetryMs: tunnel.rerouteRetryMs,
    requestTimeoutMs: http.headersTimeoutMs,
    handshakeTimeoutMs: tunnel.dialTimeoutMs,
    preConnectBufferBytes: limits.preConnectBufferBytes,
  });
  let credential: Credential;
  try {
    const { proxyAuth } = await leg.readRequest();
    credential = isToken(proxyAuth) ? { kind: 'resume', token: proxyAuth, cookie: r.cookie } : { kind: 'ticket', ticket: proxyAuth };
  } catch (e) {
    refuseTunnel(ctx.broker, leg, e, 'rdp');
    return;
  }
  await openTunnel(ctx.broker, { vmName: r.vmName, credential, hints: { protocol: 'rdp' }, tls: true, client: r.client, hold: true }, leg);
}
