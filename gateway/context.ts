/**
 * What the request handlers share: configuration, directory, auth, metrics, logs, the tunnel
 * registry and the node's lifecycle state. Built once by server.ts.
 */
import type { Audit } from './audit.js';
import type { Config } from './config.js';
import type { Directory } from './directory/directory.js';
import type { Authenticator } from './auth/authenticator.js';
import type { AuthStore } from './auth/store.js';
import type { Metrics } from './metrics.js';
import type { Logger, RateLimitedLog } from './log.js';
import type { TunnelRegistry } from './tunnel/registry.js';
import type { Relays } from './tunnel/relays.js';
import type { ClusterView } from './cluster/view.js';
import type { ResumableSession } from './tunnel/session.js';
import type { SessionRegistry } from './tunnel/session-registry.js';
import type { BrokerDeps } from './tunnel/broker.js';
import type { ResumeDeps } from './tunnel/resume.js';
import type { LeaderLink } from './http/forward.js';
import type net from 'node:net';
import type { Admission } from './admission.js';
import type { TunnelSummary } from './tunnel/registry.js';
import type { JoinService } from './cluster/join.js';

export interface GatewayContext {
  readonly config: Config;
  readonly dir: Directory;
  readonly auth: Authenticator;
  readonly store: AuthStore;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** For log lines any client can trigger at will. */
  readonly noisyLog: RateLimitedLog;
  readonly tunnels: TunnelRegistry;
  /** `oneport.v1` legs relayed to the node holding their session (tunnel/relays.ts); none outside a cluster. */
  readonly relays: Relays;
  /** `unready`: readyz answers 503 (a drain's first phase) while new tunnels are still served; `shuttingDown`: refused too. */
  readonly lifecycle: { listening: boolean; shuttingDown: boolean; unready?: boolean };
  /** The gateway's own origins (scheme://host:port) for the WebSocket Origin check. */
  readonly ownOrigins: () => readonly string[];
  /** Connections counted per client address (admission.ts): the listener's sockets and parked sessions. */
  readonly connections: Admission;
  /** Resumable (oneport.v1) sessions held on this node. */
  readonly sessions: SessionRegistry<ResumableSession>;
  /** Set when the node runs in a cluster (config.cluster.redis): status, leadership (API only). */
  readonly cluster: ClusterView | undefined;
  /** What the tunnel broker needs (tunnel/broker.ts): the entrances hand it requests and legs. */
  readonly broker: BrokerDeps;
  /** What resuming a parked `oneport.v1` session needs (tunnel/resume.ts). */
  readonly resume: ResumeDeps;
  /** Where a follower forwards directory changes (cluster only). */
  readonly leaderLink: LeaderLink | undefined;
  /** The cluster node id behind a verified node certificate on this socket; undefined otherwise (and outside a cluster). */
  readonly peerNode: (socket: net.Socket) => string | undefined;
  /** An API session was logged out here: end its live tunnels on every node. */
  readonly loggedOut: (sid: string) => void;
  /** The audit trail: sessions and admin changes (audit.ts). */
  readonly audit: Audit;
  /** Join tokens and join requests (cluster only; cluster/join.ts). */
  readonly join?: JoinService | undefined;
  /** How fresh the directory is: always fresh for the embedded one; the mirror's age in a cluster. */
  readonly directoryState: () => { readonly connected: boolean; readonly ageMs: number };
  /** Start this node's drain (drain.ts) unless one is under way; the node stops when it ends. */
  readonly drain: (opts: { moveVms: boolean; cause: string }) => { started: boolean };
  /** With workers: the session list and terminate calls reach every worker of the node (workers/worker.ts). */
  readonly workers?: WorkerSessions;
  /** /metrics text when it is not this process's registry alone (workers: aggregated by the primary). */
  readonly metricsText?: () => Promise<string>;
  /** The CA of the certificate served to clients when oneport made it (no tls.certificates), else undefined. */
  readonly selfMadeCa: string | undefined;
}

/** A node's sessions when they are spread over workers: each call goes to every worker. */
export interface WorkerSessions {
  sessions(): Promise<TunnelSummary[]>;
  /** Ends session `id` on whichever worker holds it; undefined when none does. */
  terminate(id: string): Promise<{ user: string; vm: string; ended: number } | undefined>;
  terminateUser(name: string): Promise<number>;
}
