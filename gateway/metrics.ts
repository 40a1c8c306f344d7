/**
 * Prometheus metrics, one registry per gateway instance (so tests can run several in a process).
 * Names follow Prometheus conventions: `_total` counters, `_seconds` and `_bytes` units.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export type SetupPhase = 'detect' | 'tls' | 'auth' | 'lookup' | 'dial';

/** How often the event-loop delay is sampled (the lag metrics), ms. */
const EVENT_LOOP_SAMPLE_MS = 100;

export class Metrics {
  readonly registry = new Registry();

  readonly connectionsActive = new Gauge({
    name: 'oneport_connections_active',
    help: 'Client connections open on the port, in any stage',
    registers: [this.registry],
  });
  readonly connections = new Counter({
    name: 'oneport_connections_total',
    help: 'Client connections accepted, by what detection found (tls, http, proxy) or why they were closed',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly tunnelsActive = new Gauge({
    name: 'oneport_tunnels_active',
    help: 'Open console tunnels',
    labelNames: ['protocol', 'transport'] as const,
    registers: [this.registry],
  });
  readonly tunnels = new Counter({
    name: 'oneport_tunnels_total',
    help: 'Tunnel attempts by protocol, transport (connect, connect-tls, websocket, rdcleanpath, rdp, rdg-ws, rdg-http, hop) and result (an ONEPORT_ERR code or ok)',
    labelNames: ['protocol', 'transport', 'result'] as const,
    registers: [this.registry],
  });
  readonly tunnelBytes = new Counter({
    name: 'oneport_tunnel_bytes_total',
    help: 'Bytes relayed through tunnels; direction is to_console or to_client',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });
  readonly setupSeconds = new Histogram({
    name: 'oneport_tunnel_setup_seconds',
    help: 'Time spent in each phase of tunnel setup',
    labelNames: ['phase'] as const,
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly dials = new Counter({
    name: 'oneport_dials_total',
    help: 'Outbound connections attempted to consoles, by result',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly consoleHandshakes = new Counter({
    name: 'oneport_console_handshakes_total',
    help: 'Console handshakes (stored console password, protocol check) by protocol and result: ok, console-auth (the console refused the stored password), console-protocol, client-protocol (a side did not speak the declared protocol in time)',
    labelNames: ['protocol', 'result'] as const,
    registers: [this.registry],
  });
  readonly revoked = new Counter({
    name: 'oneport_tunnels_revoked_total',
    help: 'Tunnels and parked sessions ended because the user\'s access ended (user-deleted, password-changed, vm-deleted, unassigned, terminated)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly sessionsExpired = new Counter({
    name: 'oneport_sessions_expired_total',
    help: 'Tunnels ended because their console session reached its maximum session time (close 4008)',
    registers: [this.registry],
  });
  readonly sessionCapRefusals = new Counter({
    name: 'oneport_session_limit_refusals_total',
    help: 'New console sessions refused because the user or the VM had its maxSessions open (429 / 4429), by scope (user, vm)',
    labelNames: ['scope'] as const,
    registers: [this.registry],
  });
  readonly sessionCapUnchecked = new Counter({
    name: 'oneport_session_caps_unchecked_total',
    help: 'Cluster: new console sessions admitted without a cap check because Redis did not answer (counted at the next heartbeat)',
    registers: [this.registry],
  });
  readonly auditRecords = new Counter({
    name: 'oneport_audit_records_total',
    help: 'Audit records written, by kind (session, admin)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly auditDropped = new Counter({
    name: 'oneport_audit_dropped_total',
    help: 'Audit records lost: webhook queue full, refused by the webhook, still queued at shutdown, or a file write error (queue-full, rejected, shutdown, file)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly internalErrors = new Counter({
    name: 'oneport_internal_errors_total',
    help: 'Failures no handler answered (a bug): logged at error level, the connection closed, the process kept serving',
    labelNames: ['where'] as const,
    registers: [this.registry],
  });
  readonly httpRequests = new Counter({
    name: 'oneport_http_requests_total',
    help: 'HTTP requests answered (API, portal, health), by route and status',
    labelNames: ['route', 'status'] as const,
    registers: [this.registry],
  });
  readonly authFailures = new Counter({
    name: 'oneport_auth_failures_total',
    help: 'Failed authentications by kind (login, ticket, session, password)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly tlsErrors = new Counter({
    name: 'oneport_tls_handshake_failures_total',
    help: 'TLS handshakes that failed or timed out',
    registers: [this.registry],
  });

  readonly draining = new Gauge({
    name: 'oneport_draining',
    help: '1 while this node drains (readyz answers 503, new tunnels are refused, its clients are sent elsewhere)',
    // With workers, every process reports it: /metrics keeps the max, not the sum.
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly drainTold = new Counter({
    name: 'oneport_drain_tunnels_total',
    help: 'Tunnels a drain ended on purpose: told to reconnect on another node (reroute: WebSocket 4001), to resume a oneport.v1 session held at the VM owner through another node (resume: 4001 with resume), or closed (CONNECT, native, RD Gateway)',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly drainMoves = new Counter({
    name: 'oneport_drain_vm_moves_total',
    help: 'VMs a drain with --move-vms asked the leader to move, by result (ok, failed, no-target)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly directoryVersion = new Gauge({
    name: 'oneport_directory_version',
    help: 'Version of the directory this node serves from (its mirror in a cluster)',
    // With workers, every process reports it: /metrics keeps the max, not the sum.
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly directoryAge = new Gauge({
    name: 'oneport_directory_mirror_age_seconds',
    help: 'Seconds since the mirror was last known equal to Redis (0 for the embedded directory)',
    // With workers, every process reports it: /metrics keeps the max, not the sum.
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly directoryConnected = new Gauge({
    name: 'oneport_directory_connected',
    help: '1 while the directory is reachable and the mirror is fed live',
    // With workers, every process reports it: /metrics keeps the min, not the sum.
    aggregator: 'min',
    registers: [this.registry],
  });
  readonly clusterLeader = new Gauge({
    name: 'oneport_cluster_leader',
    help: '1 while this node leads the cluster',
    // With workers, every process reports it: /metrics keeps the max, not the sum.
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly clusterEpoch = new Gauge({
    name: 'oneport_cluster_epoch',
    help: 'Fencing epoch of the current leader as this node knows it',
    // With workers, every process reports it: /metrics keeps the max, not the sum.
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly clusterNodes = new Gauge({
    name: 'oneport_cluster_nodes',
    help: 'Nodes known to the cluster by state (up, suspect, down, left)',
    labelNames: ['state'] as const,
    // With workers, every process reports it: /metrics keeps the max, not the sum.
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly failovers = new Counter({
    name: 'oneport_node_failovers_total',
    help: 'Node failovers run by this node as leader, by result',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly failoverVms = new Counter({
    name: 'oneport_failover_vms_total',
    help: 'VMs handed over by failovers this node ran: promoted to their replica, or down',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly failoverSeconds = new Histogram({
    name: 'oneport_node_failover_seconds',
    help: 'Time from confirming a node failed to all its VMs handed over',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly rerouted = new Counter({
    name: 'oneport_tunnels_rerouted_total',
    help: 'Live tunnels ended on purpose because their VM changed owner (clients told to reconnect)',
    registers: [this.registry],
  });
  readonly resumes = new Counter({
    name: 'oneport_session_resumes_total',
    help: 'oneport.v1 resume attempts: ok (replayed here), relayed (held by another node), gone, or the refusal code',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly sessionsParked = new Gauge({
    name: 'oneport_sessions_parked',
    help: 'Resumable sessions whose client leg dropped, waiting for the client to come back',
    registers: [this.registry],
  });
  readonly sessionReplayBytes = new Gauge({
    name: 'oneport_session_replay_bytes',
    help: 'Console bytes kept for replay by all resumable sessions on this node (tunnel.resume.maxBufferedBytes bounds it)',
    registers: [this.registry],
  });
  readonly sessionCaps = new Counter({
    name: 'oneport_session_caps_total',
    help: 'Resumable sessions a cap ended (parked ones giving way) or refused (new ones), by cap (sessions-per-user, parked-per-user, parked, buffered-bytes) and action',
    labelNames: ['cap', 'action'] as const,
    registers: [this.registry],
  });
  readonly hooks = new Counter({
    name: 'oneport_failover_hooks_total',
    help: 'Failover hooks run on this node, by result',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    // The event-loop delay histogram (oneport_nodejs_eventloop_lag_*) samples with a libuv timer:
    // prom-client's 10 ms wakes every process 100 times a second, tunnels or not, which was most
    // of what a node holding idle tunnels spends (bench:concurrency, 4 workers + primary).
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'oneport_', eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }

  observeSetup(phase: SetupPhase, startedAt: bigint): bigint {
    const now = process.hrtime.bigint();
    this.setupSeconds.observe({ phase }, Number(now - startedAt) / 1e9);
    return now;
  }
}
