/**
 * A real oneport gateway in its own process, so the benchmark can measure its CPU time alone
 * (/proc/<pid>/stat) while bench/run.ts drives it from another process.
 *
 *   node --import tsx bench/gateway-child.ts        (forked with an IPC channel)
 *   env BENCH_GATEWAY = JSON GatewayChildOptions
 *
 * Production defaults except: loopback, port 0, a temporary state folder, the benchmark's own
 * certificate (the one HAProxy and websockify get too), no demo desktop, no control socket, and
 * info-level logs to a file (one line per tunnel, as in production) that run.ts reads at the end.
 * One user "bench" and one VM "bench" whose VNC endpoint is the benchmark backend.
 */
import { createRequire } from 'node:module';
import { pino } from 'pino';
import { buildConfig } from '../gateway/config.js';
import { startGateway } from '../gateway/server.js';
import { createLogger } from '../gateway/log.js';
import { hashPassword, randomPassword } from '../gateway/auth/passwords.js';
import { toVmRecord, vmSchema } from '../gateway/directory/directory.js';
import { readdirSync } from 'node:fs';
import type { GatewayChildOptions, GatewayProbe, GatewayReady, GatewayReply, GatewayRequest } from './ipc.js';

const opts = JSON.parse(process.env.BENCH_GATEWAY ?? '{}') as GatewayChildOptions;
const VM = 'bench';
const USER = 'bench';

const config = buildConfig({
  listen: '127.0.0.1:0',
  state: opts.state,
  nodeId: 'bench',
  serverNames: ['localhost', '127.0.0.1'],
  tls: { certificates: [{ cert: opts.certFile, key: opts.keyFile }] },
  demo: { enabled: false },
  log: { level: 'info' },
  shutdown: { drainMs: 0 },
  // Every client is 127.0.0.1: the idle-memory phase holds thousands of tunnels from it.
  limits: { maxConnectionsPerAddress: 20000 },
});
const logDestination = pino.destination({ dest: opts.logFile, sync: false, mkdir: true });
const logger = createLogger({ level: 'info', nodeId: 'bench', destination: logDestination });
const gw = await startGateway(config, { logger, controlSocket: false, announce: () => {} });

await gw.ctx.dir.putUser({
  name: USER,
  passwordHash: await hashPassword(randomPassword()),
  roles: ['user'],
  groups: [],
  sessionsNotBefore: 0,
});
await gw.ctx.dir.putVm(
  toVmRecord(
    vmSchema.parse({
      name: VM,
      node: 'bench',
      // The same backend behind both: VNC for CONNECT and WebSocket, RDP for the RD Gateway entrance.
      endpoints: [
        { protocol: 'vnc', host: '127.0.0.1', port: opts.backendPort, publishedPort: 5900 },
        { protocol: 'rdp', host: '127.0.0.1', port: opts.backendPort, publishedPort: 3389 },
      ],
      users: [USER],
      // The backend streams or echoes bytes, not RFB: measure the relay, not the protocol check.
      protocolCheck: false,
    }),
  ),
);

const send = (m: GatewayReply | GatewayReady): void => {
  process.send?.(m);
};

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await gw.close({ drainMs: 0 });
  logDestination.flushSync();
}

process.on('message', (raw) => {
  const m = raw as GatewayRequest;
  void (async () => {
    try {
      switch (m.type) {
        case 'tickets': {
          const user = gw.ctx.dir.getUser(USER);
          const vm = gw.ctx.dir.getVm(VM);
          if (!user || !vm) throw new Error('bench user or VM missing');
          const tickets: string[] = [];
          for (let i = 0; i < m.count; i++) tickets.push((await gw.ctx.auth.issueTicket(user, vm, m.protocol ?? 'vnc')).ticket);
          send({ type: 'tickets', id: m.id, tickets });
          break;
        }
        case 'metrics':
          send({ type: 'metrics', id: m.id, text: await gw.ctx.metrics.registry.metrics() });
          break;
        case 'probe':
          send({ type: 'probe', id: m.id, ...probe() });
          break;
        case 'stop':
          await stop();
          send({ type: 'stopped', id: m.id });
          setTimeout(() => process.exit(0), 50);
          break;
      }
    } catch (e) {
      send({ type: 'error', id: m.id, message: (e as Error).message });
    }
  })();
});
process.on('disconnect', () => void stop().finally(() => process.exit(0)));
process.on('SIGTERM', () => void stop().finally(() => process.exit(0)));

function probe(): GatewayProbe {
  (globalThis as { gc?: () => void }).gc?.();
  const resources: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
  const mem = process.memoryUsage();
  return { rss: mem.rss, heapUsed: mem.heapUsed, fds: readdirSync('/proc/self/fd').length, resources, tunnels: gw.ctx.tunnels.size, connections: gw.ctx.connections.total };
}

/** `ws` loads `bufferutil` if it can (from its own folder, else NODE_PATH); the same lookup here. */
function hasBufferutil(): boolean {
  try {
    createRequire(createRequire(import.meta.url).resolve('ws'))('bufferutil');
    return true;
  } catch {
    return false;
  }
}

send({ type: 'ready', port: gw.port, vm: VM, wsBufferutil: hasBufferutil() });
