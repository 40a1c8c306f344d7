/**
 * The benchmark's oneport under test: a backend child (echo/sink/source), a gateway child in front
 * of it with the benchmark's own certificate, and the calls into the gateway child over its IPC
 * channel (tickets, metrics, a probe of what it holds, stop). Every call has a deadline; a child
 * that dies fails what is pending. Used by run.ts and soak.ts.
 */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCa, issueServerCert } from '../certs/ca.js';
import type { TlsClientOptions } from './clients.js';
import { type Peer, firstMessage, spawnPeer, waitAccepting } from './procs.js';
import { freePort } from '../test/helpers/net.js';
import { type Admin, openAdmin } from '../gateway/admin.js';
import type { BackendReady, GatewayChildOptions, GatewayProbe, GatewayReady, GatewayReply, GatewayRequest } from './ipc.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH_DIR);

/** Where the gateway child writes its log (one line per tunnel). */
export const gatewayLogFile = (work: string): string => join(work, 'gateway.log');

export interface Stack {
  /** The certificate and key (also as one PEM, for HAProxy and websockify) every TLS peer uses. */
  readonly pemFile: string;
  readonly tlsOpts: TlsClientOptions;
  readonly backendPort: number;
  readonly gateway: Peer;
  readonly gw: GatewayReady;
  readonly rpc: GatewayRpc;
  /** How `ws` in the gateway unmasks frames. */
  readonly wsUnmask: string;
}

/**
 * Start the backend and the gateway in `work`; they join `peers` (the caller stops them).
 * BENCH_GATEWAY_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the gateway;
 * BENCH_GATEWAY_NODE_PATH=/somewhere/node_modules lets the gateway alone find extra packages (e.g.
 * ws's optional native `bufferutil`) without touching the project. `nodeArgs` come first.
 */
/** One certificate for everyone who terminates TLS in a bench (oneport, HAProxy, websockify), in `work`. */
export function benchCertificate(work: string): { certFile: string; keyFile: string; pemFile: string; tlsOpts: TlsClientOptions } {
  const ca = createCa({ commonName: 'oneport bench CA' });
  const server = issueServerCert(ca, ['localhost', '127.0.0.1']);
  const certFile = join(work, 'server.pem');
  const keyFile = join(work, 'server-key.pem');
  const pemFile = join(work, 'server-combined.pem');
  writeFileSync(certFile, server.cert);
  writeFileSync(keyFile, server.key, { mode: 0o600 });
  writeFileSync(pemFile, server.cert + server.key, { mode: 0o600 });
  return { certFile, keyFile, pemFile, tlsOpts: { ca: ca.cert, servername: 'localhost' } };
}

/**
 * `oneport serve` (from source) with `workers` processes on a free loopback port, the bench's
 * certificate, user `bench` and one VM `bench-<i>` per console port; it joins `peers`. Used by
 * workers.ts and concurrency.ts; `limits` are merged over the bench's (no per-address cap).
 */
export async function startServe(
  work: string,
  name: string,
  peers: Peer[],
  o: { workers: number; certFile: string; keyFile: string; consolePorts: readonly number[]; limits?: Record<string, number> },
): Promise<{ gw: Peer; port: number; admin: Admin }> {
  const state = join(work, `${name}-state`);
  const port = await freePort();
  const config = join(work, `${name}.json`);
  writeFileSync(
    config,
    JSON.stringify({
      listen: `127.0.0.1:${port}`,
      state,
      nodeId: 'bench',
      workers: o.workers,
      tls: { certificates: [{ cert: o.certFile, key: o.keyFile }] },
      log: { level: 'warn', format: 'json' },
      demo: { enabled: false },
      tunnel: { protocolCheck: false },
      limits: { maxConnectionsPerAddress: 100_000, ...o.limits },
      shutdown: { drainMs: 1000 },
    }),
  );
  // BENCH_GATEWAY_NODE_ARGS reach the primary and, through node:cluster's execArgv, every worker.
  const nodeArgs = (process.env.BENCH_GATEWAY_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const gw = spawnPeer(name, process.execPath, [...nodeArgs, '--import', 'tsx', join(ROOT, 'gateway', 'cli.ts'), 'serve', '--config', config], {
    cwd: ROOT,
    env: { ...process.env, ONEPORT_STATE: state },
    logFile: join(work, `${name}.log`),
  });
  peers.push(gw);
  await waitAccepting(gw, port, 90_000);
  const admin = await openAdmin(state);
  await admin.putUser('bench', { password: 'bench-password-1' });
  for (const [i, p] of o.consolePorts.entries()) {
    await admin.putVm({ name: `bench-${i}`, node: 'bench', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: p, publishedPort: 5900 }], users: ['bench'] } as Parameters<typeof admin.putVm>[0]);
  }
  return { gw, port, admin };
}

export async function startStack(work: string, peers: Peer[], log: (line: string) => void, nodeArgs: readonly string[] = []): Promise<Stack> {
  const { certFile, keyFile, pemFile, tlsOpts } = benchCertificate(work);

  const node = process.execPath;
  const backend = spawnPeer('backend', node, ['--import', 'tsx', join(BENCH_DIR, 'backend-child.ts')], {
    cwd: ROOT,
    ipc: true,
    logFile: join(work, 'backend.log'),
  });
  peers.push(backend);
  const backendPort = (await firstMessage<BackendReady>(backend, 'ready', 60_000)).port;
  log(`  backend (echo/sink) pid ${backend.pid} on 127.0.0.1:${backendPort}`);

  const gwOpts: GatewayChildOptions = {
    backendPort,
    certFile,
    keyFile,
    state: join(work, 'gateway-state'),
    logFile: gatewayLogFile(work),
  };
  const gatewayNodeArgs = [...nodeArgs, ...(process.env.BENCH_GATEWAY_NODE_ARGS ?? '').split(' ').filter(Boolean)];
  const gateway = spawnPeer('gateway', node, [...gatewayNodeArgs, '--import', 'tsx', join(BENCH_DIR, 'gateway-child.ts')], {
    cwd: ROOT,
    ipc: true,
    env: {
      ...process.env,
      BENCH_GATEWAY: JSON.stringify(gwOpts),
      ...(process.env.BENCH_GATEWAY_NODE_PATH ? { NODE_PATH: process.env.BENCH_GATEWAY_NODE_PATH } : {}),
    },
    logFile: join(work, 'gateway-stdio.log'),
  });
  peers.push(gateway);
  const gw = await firstMessage<GatewayReady>(gateway, 'ready', 90_000);
  const wsUnmask = gw.wsBufferutil ? 'native bufferutil' : 'JavaScript fallback (bufferutil not installed)';
  log(`  oneport gateway pid ${gateway.pid} on 127.0.0.1:${gw.port} (ws unmask: ${wsUnmask})`);
  return { pemFile, tlsOpts, backendPort, gateway, gw, rpc: new GatewayRpc(gateway), wsUnmask };
}

export class GatewayRpc {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: GatewayReply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(private readonly peer: Peer) {
    peer.child.on('message', (m: unknown) => {
      const r = m as GatewayReply;
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      clearTimeout(p.timer);
      if (r.type === 'error') p.reject(new Error(`gateway: ${r.message}`));
      else p.resolve(r);
    });
    void peer.exited.then((how) => {
      for (const p of this.pending.values()) p.reject(new Error(`gateway ${how}`));
      this.pending.clear();
    });
  }

  private call(type: GatewayRequest['type'], extra: { count?: number; protocol?: 'vnc' | 'rdp' }, timeoutMs: number): Promise<GatewayReply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`gateway: no answer to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.peer.child.send({ type, id, ...extra });
    });
  }

  /** Single-use console tickets for the bench VM: VNC for CONNECT and WebSocket, RDP for the RD Gateway path. */
  async tickets(count: number, protocol: 'vnc' | 'rdp' = 'vnc'): Promise<string[]> {
    const r = await this.call('tickets', { count, protocol }, 30_000);
    return r.type === 'tickets' ? r.tickets : [];
  }

  async metrics(): Promise<string> {
    const r = await this.call('metrics', {}, 10_000);
    return r.type === 'metrics' ? r.text : '';
  }

  async probe(): Promise<GatewayProbe> {
    const r = await this.call('probe', {}, 20_000);
    if (r.type !== 'probe') throw new Error(`gateway: unexpected answer ${r.type} to probe`);
    return r;
  }

  async stop(): Promise<void> {
    await this.call('stop', {}, 10_000);
  }
}
