/**
 * A client of a parked `oneport.v1` session comes back: `?resume=<token>&session=<id>&received=<n>`.
 * The resume token proves user and VM; the session must be theirs, and the VM still assigned to
 * them. Held on this node: attach and replay. Held on another node (cluster): relay this leg to
 * it. Gone (the console died, the grace period passed): 4001, so the client reconnects fresh with
 * its resume token.
 */
import { WebSocket } from 'ws';
import type { Authenticator } from '../auth/authenticator.js';
import { type Directory, isAssigned } from '../directory/directory.js';
import { OneportError, toOneportError } from '../errors.js';
import type { Logger, RateLimitedLog } from '../log.js';
import type { Metrics } from '../metrics.js';
import { keepAlive } from './legs/websocket.js';
import type { ResumableSession } from './session.js';
import type { SessionRegistry } from './session-registry.js';
import type { RelayRequest } from './relays.js';

/**
 * Where sessions are held across the cluster, and how to hand a leg to the node holding one: a
 * new session is held at its VM's owner (`ownerOf`), a resumed one wherever it is (`holder`).
 */
export interface SessionRelay {
  /** The node holding session `id`, if another node recorded it. */
  holder(id: string): Promise<string | undefined>;
  /** The VM's owner when that is another up node: a new `oneport.v1` session of it is held there. */
  ownerOf(vm: string): string | undefined;
  /** Relay a leg to `holder`, which authorizes it and attaches it to its session (a new one, or the one resumed). */
  relay(holder: string, client: WebSocket, r: RelayRequest): Promise<unknown>;
  readonly self: string;
  /** `holder` is another worker of this node: a leg another node relayed here is relayed on to it. */
  local?(holder: string): boolean;
}

export interface ResumeDeps {
  readonly auth: Authenticator;
  readonly dir: Directory;
  readonly sessions: SessionRegistry<ResumableSession>;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly noisyLog: RateLimitedLog;
  readonly pingIntervalMs: number;
  /** Set in a cluster. */
  readonly relay: SessionRelay | undefined;
}

export interface ResumeRequest {
  readonly vmName: string;
  readonly protocol: string;
  readonly resume: string | null;
  readonly session: string;
  readonly received: string | null;
  readonly client: string;
  /** Relayed here by another node: never relayed to a third (the sender asked the node Redis names), only to the worker holding it. */
  readonly forwarded?: boolean;
}

export async function resumeSession(deps: ResumeDeps, ws: WebSocket, r: ResumeRequest): Promise<void> {
  ws.on('error', () => ws.terminate());
  const queued: Buffer[] = [];
  let queuedBytes = 0;
  // The client sends nothing before the hello; a few bytes that raced in are kept, no more.
  const onMessage = (data: Buffer): void => {
    queuedBytes += data.length;
    if (queuedBytes <= 64 * 1024) queued.push(Buffer.from(data));
  };
  ws.on('message', onMessage);
  try {
    if (!r.resume) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'resuming a session needs its resume token');
    const received = Number(r.received ?? 'NaN');
    if (!Number.isSafeInteger(received) || received < 0) throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'received must be a byte count');
    const grant = await deps.auth.resume(r.resume, r.vmName, r.client);
    const local = deps.sessions.get(r.session);
    if (local) {
      if (local.owner.user !== grant.user.name || local.owner.vm !== r.vmName || local.owner.protocol !== r.protocol) {
        throw new OneportError('ONEPORT_ERR_TICKET_INVALID', 'not your session');
      }
      const vm = deps.dir.getVm(r.vmName);
      // Access may have ended while the session was parked.
      if (!vm || !isAssigned(vm, grant.user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
      ws.removeListener('message', onMessage);
      const refused = local.attach(ws, r.client, received, queued);
      if (refused) throw new OneportError('ONEPORT_ERR_TICKET_INVALID', refused === 'offset' ? 'cannot replay from that offset' : 'session ended');
      deps.metrics.resumes.inc({ result: 'ok' });
      deps.log.info({ event: 'session-resumed', vm: r.vmName, user: grant.user.name, session: r.session, legs: local.legs, client: r.client }, `session on ${r.vmName} resumed`);
      keepAlive(ws, deps.pingIntervalMs);
      return;
    }
    const holder = await deps.relay?.holder(r.session);
    if (deps.relay && holder && holder !== deps.relay.self && (!r.forwarded || deps.relay.local?.(holder) === true)) {
      ws.removeListener('message', onMessage);
      const path = `/tunnel/${encodeURIComponent(r.vmName)}/${encodeURIComponent(r.protocol)}?resume=${encodeURIComponent(r.resume)}&session=${encodeURIComponent(r.session)}&received=${received}`;
      await deps.relay.relay(holder, ws, { path, vm: r.vmName, client: r.client, queued });
      deps.metrics.resumes.inc({ result: 'relayed' });
      return;
    }
    deps.metrics.resumes.inc({ result: 'gone' });
    // The console is gone with its session: reconnect fresh (level 2) with the resume token.
    if (ws.readyState === WebSocket.OPEN) ws.close(4001, JSON.stringify({ retryMs: 0, fresh: true }));
  } catch (e) {
    ws.removeListener('message', onMessage);
    const err = toOneportError(e);
    deps.metrics.resumes.inc({ result: err.code });
    if (err.code === 'ONEPORT_ERR_INTERNAL') deps.log.error({ err: e, event: 'resume-failed', client: r.client }, 'resume failed');
    else if (deps.noisyLog.take(`resume:${err.code}`) >= 0) deps.log.info({ event: 'resume-refused', client: r.client, code: err.code }, err.message);
    if (ws.readyState === WebSocket.OPEN) ws.close(err.wsClose, err.code);
  }
}
