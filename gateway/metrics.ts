/**
 * Prometheus metrics, one registry per gateway instance (so tests can run several in a process).
 * Names follow Prometheus conventions: `_total` counters, `_seconds` and `_bytes` units.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export type SetupPhase = 'detect' | 'tls' | 'auth' | 'lookup' | 'dial';

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
    help: 'Tunnel attempts by protocol, transport (connect, connect-tls, websocket) and result (an ONEPORT_ERR code or ok)',
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

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'oneport_' });
  }

  observeSetup(phase: SetupPhase, startedAt: bigint): bigint {
    const now = process.hrtime.bigint();
    this.setupSeconds.observe({ phase }, Number(now - startedAt) / 1e9);
    return now;
  }
}
