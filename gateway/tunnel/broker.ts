/**
 * One owner for a tunnel's life. An entrance turns its transport into a request and a client leg
 * (legs/); `openTunnel` does the rest, in order:
 *
 *   authorize (authorize.ts) -> the session's controls (policy.ts: idle timeout, maximum session
 *   time; session-caps.ts: a slot under the user's and the VM's caps) and the leg's own limits
 *   (admit) -> hold while the VM changes hands and reach its console (hold.ts, with the Reach
 *   handed in) -> the console handshake (console-handshake.ts: stored console passwords, the
 *   protocol check), or the leg's own when it speaks the opening itself (RDCleanPath) -> attach
 *   the leg -> register (with the session's one expiry timer) -> one log line and one audit
 *   record when it ends
 *
 * and owns the one refusal path: count the refusal, log it (rate-limited, or at error level for a
 * bug), answer through the leg. Nothing here knows whether the node is part of a cluster.
 */
import type { Audit } from '../audit.js';
import type { Authenticator } from '../auth/authenticator.js';
import type { Directory } from '../directory/directory.js';
import { OneportError, toOneportError } from '../errors.js';
import type { Logger, RateLimitedLog } from '../log.js';
import type { Metrics } from '../metrics.js';
import { authorizeTunnel } from './authorize.js';
import { sessionExpiredMessage } from './close.js';
import { type HandshakeDeps, consoleHandshake } from './console-handshake.js';
import { reachHeld } from './hold.js';
import { type EffectivePolicy, type PolicyDefaults, effectivePolicy } from './policy.js';
import type { ClientLeg } from './legs/leg.js';
import type { Pump } from './pump.js';
import type { Reach } from './reach.js';
import type { SessionCaps, SessionSlot } from './session-caps.js';
import type { TunnelRegistry, Tunnel } from './registry.js';
import type { TunnelRequest, TunnelTarget } from './request.js';
import type { VmWatcher } from './watcher.js';

export interface BrokerDeps {
  readonly dir: Directory;
  readonly auth: Authenticator;
  readonly reach: Reach;
  readonly watcher: VmWatcher;
  readonly tunnels: TunnelRegistry;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** For log lines any client can trigger at will. */
  readonly noisyLog: RateLimitedLog;
  readonly lifecycle: { readonly shuttingDown: boolean };
  /** This node's id in a cluster (a hop is accepted only for VMs it owns). */
  readonly nodeId: string | undefined;
  /** How long a client may be held while its VM changes hands (config tunnel.holdMs). */
  readonly holdMs: number;
  /** Idle timeout and maximum session time where a VM's policy says nothing (config tunnel.*). */
  readonly policy: PolicyDefaults;
  /** Concurrent sessions per user and per VM: this node's, counted cluster-wide in a cluster. */
  readonly caps: SessionCaps;
  /** Where each session's audit record goes when it ends. */
  readonly audit: Pick<Audit, 'record'>;
  /** This node's id (config nodeId), the entry node of the tunnels opened here. */
  readonly self: string;
  /** The console handshake's deadline and the protocol check's default (config tunnel.*). */
  readonly handshake: HandshakeDeps['handshake'];
  /** Stream tunnels: how long one direction may stay open after the other's FIN (config tunnel.halfCloseMs). */
  readonly halfCloseMs?: number;
}

/** Authorize, hold, reach, attach, register. Never rejects: a refusal is answered through the leg. */
export async function openTunnel(deps: BrokerDeps, request: TunnelRequest, leg: ClientLeg): Promise<Tunnel | undefined> {
  let protocol = 'unknown';
  const setUp = deps.tunnels.settingUpOne();
  try {
    if (deps.lifecycle.shuttingDown) throw new OneportError('ONEPORT_ERR_SHUTTING_DOWN', undefined, { retryAfter: 5 });
    const authorized = await authorizeTunnel(deps, request);
    protocol = authorized.endpoint.protocol;
    try {
      return await openAuthorized(deps, authorized, leg);
    } catch (e) {
      authorized.release?.();
      throw e;
    }
  } catch (e) {
    refuseTunnel(deps, leg, e, protocol);
    return undefined;
  } finally {
    setUp();
  }
}

/** Caps, hold, reach, handshake, attach, register; rejects with the refusal. */
async function openAuthorized(deps: BrokerDeps, authorized: TunnelTarget, leg: ClientLeg): Promise<Tunnel> {
  const policy = policyFor(deps, authorized);
  // The leg's own limits (resumable-session caps), then a new session over a cap is refused
  // here, before any dial; the slot is this tunnel's share of its session until it ends.
  leg.admit?.(authorized);
  const slot = await deps.caps.acquire(authorized);
  try {
    const deadline = sessionDeadline(authorized, policy, slot.startedAt);
    if (deadline !== undefined && deadline <= Date.now()) throw new OneportError('ONEPORT_ERR_SESSION_EXPIRED');
    // Held here (no status line for CONNECT, an open WebSocket) while the VM changes hands.
    const { console: reached, target } = await reachHeld(deps, authorized, leg.gone);
    let pump: Pump;
    try {
      // Before the client is answered: log in with the stored console password, check the
      // protocol; what needs the client's bytes runs in front of the console (console-handshake.ts).
      // A leg that speaks the opening itself (RDCleanPath: X.224 and TLS) has its own handshake.
      const console = leg.handshake ? await leg.handshake(reached, target) : await consoleHandshake(deps, target, reached, leg);
      pump = leg.attach(console, target, { endJudge: deps.reach.endJudge(target.vm), idleTimeoutMs: policy.idleTimeoutMs, halfCloseMs: deps.halfCloseMs });
    } catch (e) {
      reached.socket.destroy();
      throw e;
    }
    return register(deps, target, leg, pump, { policy, deadline, slot });
  } catch (e) {
    slot.release();
    throw e;
  }
}

/**
 * The one refusal path, also for refusals an entrance finds before it has a request (a malformed
 * CONNECT target, a bad header): count, log, answer through the leg.
 */
export function refuseTunnel(deps: Pick<BrokerDeps, 'metrics' | 'log' | 'noisyLog'>, leg: ClientLeg, e: unknown, protocol = 'unknown'): OneportError {
  const err = toOneportError(e);
  deps.metrics.tunnels.inc({ protocol, transport: leg.transport, result: err.code });
  const event = leg.transport === 'hop' ? 'hop-refused' : 'tunnel-refused';
  if (err.code === 'ONEPORT_ERR_INTERNAL') {
    deps.metrics.internalErrors.inc({ where: leg.transport });
    deps.log.error({ err: e, event, transport: leg.transport, client: leg.client, ...leg.logFields }, `${leg.transport} tunnel failed`);
  } else if (deps.noisyLog.take(`${leg.transport}:${err.code}`) >= 0) {
    deps.log.info({ event, transport: leg.transport, client: leg.client, code: err.code, status: err.status, ...leg.logFields }, err.message);
  }
  leg.refuse(err);
  return err;
}

/**
 * The VM's policy for this user. A hop's user is only a name the sending node vouched for: its
 * groups come from the directory, so the owner's side of the tunnel idles out with the entry's.
 */
function policyFor(deps: BrokerDeps, target: TunnelTarget): EffectivePolicy {
  const user = target.via === 'hop' ? (deps.dir.getUser(target.user.name) ?? target.user) : target.user;
  return effectivePolicy(target.vm, user, deps.policy);
}

/**
 * When the console session must end (undefined: never). Counted from the session's beginning: a
 * SPICE client's later channels (the session as held here, session-caps.ts) and a reconnect with
 * the resume token (counted from its ticket's issue) end with the first; a parked `oneport.v1` session is one tunnel, so parked time counts.
 * The entry node enforces it; a hop ends with its entry's tunnel.
 */
function sessionDeadline(target: TunnelTarget, policy: EffectivePolicy, heldSince: number): number | undefined {
  if (policy.maxSessionMs === 0 || target.via === 'hop') return undefined;
  return Math.min(heldSince, target.sessionSince ?? heldSince) + policy.maxSessionMs;
}

/** A running tunnel: in the registry, counted, and logged once when it ends. */
function register(deps: BrokerDeps, target: TunnelTarget, leg: ClientLeg, pump: Pump, controls: { policy: EffectivePolicy; deadline: number | undefined; slot: SessionSlot }): Tunnel {
  const { metrics, tunnels, log } = deps;
  const transport = leg.transport;
  const labels = { protocol: target.endpoint.protocol, transport };
  const tunnel: Tunnel = {
    id: tunnels.nextId(),
    vm: target.vm.name,
    protocol: target.endpoint.protocol,
    transport,
    user: target.user.name,
    sessionId: target.sessionId,
    client: leg.client,
    startedAt: Date.now(),
    node: target.vm.node,
    epoch: target.vm.epoch,
    expiresAt: controls.deadline,
    pump,
    apiSession: target.apiSession,
  };
  // One timer per tunnel at most, cleared when it ends.
  const expiry =
    controls.deadline === undefined
      ? undefined
      : setTimeout(() => {
          metrics.sessionsExpired.inc();
          pump.close('session-expired', sessionExpiredMessage(controls.policy.maxSessionMs));
        }, Math.max(0, controls.deadline - Date.now())).unref();
  tunnels.add(tunnel);
  metrics.tunnelsActive.inc(labels);
  metrics.tunnels.inc({ ...labels, result: 'ok' });
  const setupMs = Number(process.hrtime.bigint() - leg.acceptedAt) / 1e6;
  void pump.done.then((r) => {
    clearTimeout(expiry);
    controls.slot.release();
    target.release?.();
    tunnels.delete(tunnel);
    metrics.tunnelsActive.dec(labels);
    metrics.tunnelBytes.inc({ direction: 'to_console' }, r.bytesToConsole);
    metrics.tunnelBytes.inc({ direction: 'to_client' }, r.bytesToClient);
    const endedAt = Date.now();
    // What the log line and the audit record both say about the tunnel.
    const summary = {
      user: tunnel.user,
      vm: tunnel.vm,
      protocol: tunnel.protocol,
      transport,
      client: leg.client,
      via: target.via,
      session: tunnel.sessionId,
      consoleNode: target.vm.node,
      bytesToConsole: r.bytesToConsole,
      bytesToClient: r.bytesToClient,
      durationMs: endedAt - tunnel.startedAt,
      closeReason: r.reason,
    };
    // The entry node records the session; a hop is its owner-side half.
    if (transport !== 'hop') {
      deps.audit.record({
        kind: 'session',
        time: new Date(endedAt).toISOString(),
        id: tunnel.id,
        ...summary,
        entryNode: deps.self,
        start: new Date(tunnel.startedAt).toISOString(),
        end: new Date(endedAt).toISOString(),
      });
    }
    log.info({ event: 'tunnel', tunnel: tunnel.id, ...summary, setupMs: Math.round(setupMs * 100) / 100 }, 'tunnel closed');
  });
  return tunnel;
}
