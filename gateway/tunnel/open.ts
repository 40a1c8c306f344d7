/**
 * From an authorised request to a running tunnel: dial the console (with the dial deadline and
 * cancellation when the client leaves), then register the pump, count it, and write the one log
 * line per tunnel when it ends.
 */
import type net from 'node:net';
import type { GatewayContext } from '../context.js';
import type { Endpoint, UserRecord, VmRecord } from '../directory/directory.js';
import { dial } from './dial.js';
import { OneportError } from '../errors.js';
import type { Pump } from './pump.js';
import type { Transport, Tunnel } from './registry.js';

export interface TunnelTarget {
  readonly vm: VmRecord;
  readonly endpoint: Endpoint;
  readonly user: UserRecord;
  readonly sessionId: string;
  /** How the client proved who it is (for the log line); 'hop' = another node vouched for it. */
  readonly via: 'ticket' | 'password' | 'session' | 'hop';
}

let nextTunnelId = 1;

/**
 * Reach the console: dial it, or, in a cluster, when another node owns the VM, hop through that
 * node's one port (it dials its console locally; config `cluster.consoleDial`).
 */
export async function dialConsole(ctx: GatewayContext, target: TunnelTarget, signal: AbortSignal): Promise<net.Socket> {
  const started = process.hrtime.bigint();
  try {
    const { cluster } = ctx;
    if (cluster && target.vm.node !== cluster.nodeId && ctx.config.cluster.consoleDial === 'via-owner') {
      const owner = cluster.node(target.vm.node);
      if (!owner || owner.state !== 'up') {
        throw new OneportError('ONEPORT_ERR_VM_RECOVERING', `the VM's node ${target.vm.node} is not reachable; the cluster is failing it over`, { retryAfter: 5 });
      }
      const { vm, endpoint } = target;
      return await cluster.peers.hop(
        owner.info.address,
        vm.node,
        { vm: vm.name, protocol: endpoint.protocol, port: endpoint.publishedPort, user: target.user.name, epoch: vm.epoch },
        signal,
        ctx.config.tunnel.dialTimeoutMs,
      );
    }
    return await dial(target.endpoint, { timeoutMs: ctx.config.tunnel.dialTimeoutMs, signal, metrics: ctx.metrics });
  } finally {
    ctx.metrics.observeSetup('dial', started);
  }
}

export function trackTunnel(
  ctx: GatewayContext,
  target: TunnelTarget,
  transport: Transport,
  client: string,
  pump: Pump,
  acceptedAt: bigint,
): Tunnel {
  const labels = { protocol: target.endpoint.protocol, transport };
  const tunnel: Tunnel = {
    id: nextTunnelId++,
    vm: target.vm.name,
    protocol: target.endpoint.protocol,
    transport,
    user: target.user.name,
    sessionId: target.sessionId,
    client,
    startedAt: Date.now(),
    pump,
  };
  ctx.tunnels.add(tunnel);
  ctx.metrics.tunnelsActive.inc(labels);
  ctx.metrics.tunnels.inc({ ...labels, result: 'ok' });
  const setupMs = Number(process.hrtime.bigint() - acceptedAt) / 1e6;
  void pump.done.then((r) => {
    ctx.tunnels.delete(tunnel);
    ctx.metrics.tunnelsActive.dec(labels);
    ctx.metrics.tunnelBytes.inc({ direction: 'to_console' }, r.bytesToConsole);
    ctx.metrics.tunnelBytes.inc({ direction: 'to_client' }, r.bytesToClient);
    ctx.log.info(
      {
        event: 'tunnel',
        tunnel: tunnel.id,
        user: tunnel.user,
        vm: tunnel.vm,
        protocol: tunnel.protocol,
        transport,
        client,
        via: target.via,
        session: tunnel.sessionId,
        consoleNode: target.vm.node,
        bytesToConsole: r.bytesToConsole,
        bytesToClient: r.bytesToClient,
        setupMs: Math.round(setupMs * 100) / 100,
        durationMs: Date.now() - tunnel.startedAt,
        closeReason: r.reason,
      },
      'tunnel closed',
    );
  });
  return tunnel;
}
