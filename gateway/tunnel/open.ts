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
  readonly via: 'ticket' | 'password' | 'session' | 'resume' | 'hop';
}

let nextTunnelId = 1;

/** Network failures worth another try once the directory says where the console is now. */
const RETRYABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED']);

function retryable(err: unknown): boolean {
  if (!(err instanceof OneportError)) return false;
  if (err.code === 'ONEPORT_ERR_VM_RECOVERING') return true; // the owner says the VM is changing hands
  if (err.code !== 'ONEPORT_ERR_CONSOLE_UNREACHABLE') return false;
  const cause = err.cause as NodeJS.ErrnoException | OneportError | undefined;
  if (cause === undefined) return /deadline/.test(err.message);
  // A hop that failed: the owner's node did not answer (its own cause) or refused.
  if (cause instanceof OneportError) return retryable(cause);
  return RETRYABLE_CODES.has((cause as NodeJS.ErrnoException).code ?? '') || /no TLS within|closed before answering|did not answer/.test(String((cause as Error).message));
}

/** Is the VM between owners: recovering, migrating, or owned by a node the cluster no longer hears? */
function changingHands(ctx: GatewayContext, vm: VmRecord): boolean {
  if (vm.state === 'recovering' || vm.state === 'migrating') return true;
  const { cluster } = ctx;
  if (!cluster || vm.node === cluster.nodeId) return false;
  const owner = cluster.node(vm.node);
  return owner === undefined || owner.state !== 'up';
}

/**
 * Wait for the next directory change to `vm` (or a membership change of its owner, which shows as
 * a VM change once the leader fails the node over), at most `ms`; resolves early on abort.
 */
function nextChange(ctx: GatewayContext, vm: string, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      ctx.dir.removeListener('change', onChange);
      ctx.dir.removeListener('resync', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const onChange = (c: { kind: string; name?: string }): void => {
      if (c.kind === 'vm' && c.name === vm) done();
    };
    const timer = setTimeout(done, ms);
    ctx.dir.on('change', onChange);
    ctx.dir.on('resync', done);
    signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Dial with failover in mind (session-continuity): a console that does not answer while its VM is
 * changing hands does not fail the client. The client is held (no status line for CONNECT, an
 * open WebSocket) while the VM is recovering or migrating, or its owner is silent; it wakes on
 * the VM's directory change (the new owner marks it running once its console answers), with a
 * jittered backoff as a safety net, and gives up after `tunnel.holdMs` with 503 / 4503. Only
 * network failures are retried; an auth or directory error never is.
 */
export async function openConsole(ctx: GatewayContext, target: TunnelTarget, signal: AbortSignal): Promise<{ socket: net.Socket; target: TunnelTarget }> {
  const holdMs = ctx.config.tunnel.holdMs;
  const started = Date.now();
  let attempt = 0;
  let held = false;
  for (;;) {
    const vm = ctx.dir.getVm(target.vm.name);
    if (!vm) throw new OneportError('ONEPORT_ERR_UNKNOWN_VM');
    if (vm.state === 'down') throw new OneportError('ONEPORT_ERR_VM_DOWN', undefined, { retryAfter: 30 });
    const endpoint = vm.endpoints.find((e) => e.protocol === target.endpoint.protocol);
    if (!endpoint) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    const current: TunnelTarget = { ...target, vm, endpoint };
    let lastError: unknown;
    if (!changingHands(ctx, vm)) {
      try {
        const socket = await dialConsole(ctx, current, signal);
        if (held) ctx.log.info({ event: 'tunnel-held', vm: vm.name, node: vm.node, epoch: vm.epoch, ms: Date.now() - started, attempts: attempt }, `held client reached ${vm.name} on ${vm.node}`);
        return { socket, target: current };
      } catch (err) {
        if (signal.aborted || !retryable(err)) throw err;
        const now = ctx.dir.getVm(vm.name);
        // The owner's node itself not answering (not its console) means it is probably dying:
        // the cluster will fail it over, so wait for that.
        const ownerSilent = ctx.cluster !== undefined && vm.node !== ctx.cluster.nodeId && (err as OneportError).message.includes('did not answer');
        const ownerSaysMoving = (err as OneportError).code === 'ONEPORT_ERR_VM_RECOVERING';
        const unchanged = now !== undefined && !changingHands(ctx, now) && now.epoch === vm.epoch && now.node === vm.node;
        // A running VM on a live owner whose console refuses: nothing is going to change; say so.
        if (!now || holdMs === 0 || (unchanged && !ownerSilent && !ownerSaysMoving)) throw err;
        lastError = err;
      }
    }
    const left = holdMs - (Date.now() - started);
    if (left <= 0 || signal.aborted) {
      throw new OneportError('ONEPORT_ERR_VM_RECOVERING', `${vm.name} did not come back within ${Math.round(holdMs / 1000)} s`, { retryAfter: 5, cause: lastError });
    }
    if (!held) {
      held = true;
      ctx.log.info({ event: 'tunnel-hold', vm: vm.name, node: vm.node, state: vm.state, epoch: vm.epoch }, `holding a client of ${vm.name} while it changes hands`);
    }
    // Jittered exponential backoff, 100 ms doubling to 2 s; a directory change wakes us sooner.
    const backoff = Math.min(2000, 100 * 2 ** attempt++) * (0.5 + Math.random() / 2);
    await nextChange(ctx, vm.name, Math.min(backoff, left), signal);
  }
}

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
    node: target.vm.node,
    epoch: target.vm.epoch,
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

const HOP_REROUTE_GRACE_MS = 1000;

/**
 * The VM's owner changed (failover or planned move): end every live tunnel to it on purpose, so
 * no client sits on a dead console waiting for a TCP timeout. WebSocket clients get 4001 with
 * `retryMs` and reconnect with their resume token; CONNECT clients see the connection close.
 */
export function rerouteMoved(ctx: GatewayContext, vmName: string): number {
  const vm = ctx.dir.getVm(vmName);
  let n = 0;
  // CONTRACT section 4: JSON with retryMs (jittered, so a crowd does not come back at once),
  // plus the new owner, for the client's "moved to node X".
  const reason = (): string => JSON.stringify({ retryMs: Math.floor(Math.random() * ctx.config.tunnel.rerouteRetryMs), ...(vm ? { node: vm.node } : {}) });
  for (const t of ctx.tunnels.byVm(vmName)) {
    if (vm && vm.node === t.node) continue;
    if (t.transport === 'hop') {
      // The entry node tells its client (4001) and closes the hop itself; closing here first
      // would reach it as a plain console close. Only a hop left open (its entry node did not
      // hear of the move) is closed from this side, a moment later.
      setTimeout(() => t.pump.close('rerouted', reason()), HOP_REROUTE_GRACE_MS).unref();
    } else {
      t.pump.close('rerouted', reason());
    }
    n++;
  }
  if (n > 0) {
    ctx.metrics.rerouted.inc(n);
    ctx.log.info({ event: 'tunnels-rerouted', vm: vmName, tunnels: n, node: vm?.node ?? null, epoch: vm?.epoch ?? null }, `${vmName} moved: ${n} tunnel(s) told to reconnect`);
  }
  return n;
}
