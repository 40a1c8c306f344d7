/**
 * Many concurrent tunnels on one node (issue 13): oneport `serve` with workers, then HAProxy, each
 * holding N idle tunnels (default 20,000: TLS on the client leg, the console leg to an echo
 * backend that speaks first), and at that load:
 *
 * - setup p50/p99 of `setups` new sequential tunnels (TLS handshake, CONNECT with a ticket for
 *   oneport, banner, first echo, close), full TLS handshakes as a new client makes;
 * - round trip p50/p99 of 64-byte pings over one tunnel, and over direct TCP to the backend in
 *   the same phase (the "added" round trip is the difference);
 * - RSS of the server's processes (primary + workers; every HAProxy process) per held tunnel;
 * - descriptors per process and the load average.
 *
 * This machine allows `ulimit -n` descriptors per process, so every side is split: oneport runs
 * `workers` workers (2 descriptors per tunnel each), HAProxy as many processes sharing the port
 * (SO_REUSEPORT, HAProxy's default on Linux; one process with nbthread 2 would need 2 x N
 * descriptors), the idle tunnels are opened by `clients` child processes and the console legs
 * end in `backends` backend processes. Each count is checked against `ulimit -n` before starting.
 *
 *   npm run bench:concurrency                      N = 20,000
 *   npm run bench:concurrency -- --tunnels 2000 --quick
 *   npm run bench:concurrency -- --only oneport
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { type LatencyRun, type Opener, type SetupRun, type TlsClientOptions, connectOpener, latency, setup, tcpOpener, tlsOpener } from './clients.js';
import { type Peer, fdCount, firstMessage, nofileLimit, rssKiB, spawnPeer, stopAll, treeCpuSeconds, treePids, waitAccepting } from './procs.js';
import type { BackendReady } from './ipc.js';
import type { ClientChildIn, ClientChildOptions, ClientChildOut } from './concurrency-client.js';
import { benchCertificate, startServe } from './gateway-rpc.js';
import { freePort } from '../test/helpers/net.js';
import type { Admin } from '../gateway/admin.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = join(BENCH_DIR, '..');

const { values: args } = parseArgs({
  options: {
    tunnels: { type: 'string' },
    workers: { type: 'string' },
    clients: { type: 'string' },
    backends: { type: 'string' },
    setups: { type: 'string' },
    pings: { type: 'string' },
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    'no-resume': { type: 'boolean', default: false },
    'no-write': { type: 'boolean', default: false },
  },
});
const quick = args.quick ?? false;
const TUNNELS = Number(args.tunnels ?? (quick ? 2000 : 20_000));
const WORKERS = Number(args.workers ?? 4);
const CLIENTS = Number(args.clients ?? 4);
const BACKENDS = Number(args.backends ?? 2);
const SETUPS = Number(args.setups ?? (quick ? 100 : 500));
const PINGS = Number(args.pings ?? (quick ? 500 : 2000));
const ONLY = new Set((args.only ?? 'oneport,haproxy').split(','));
/** Tickets are minted this many at a time, right before use (single use, 60 s). */
const BATCH = 250;
/** Tunnels being opened at once by each client process. */
const CLIENT_CONCURRENCY = 16;
/** Descriptors a process has besides its tunnels (stdio, IPC, listener, epoll, libuv, files). */
const SLACK = 200;
const RESUME = !(args['no-resume'] ?? false);

const log = (s: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
const load = (): number[] => os.loadavg().map((x) => Math.round(x * 100) / 100);

interface ProcessFigure {
  readonly role: string;
  readonly pid: number;
  readonly fds: number;
  readonly rssKiB: number;
}

interface Phase {
  readonly server: 'oneport' | 'haproxy';
  readonly processes: number;
  readonly tunnels: number;
  readonly opened: number;
  readonly openErrors: number;
  readonly firstOpenError: string | undefined;
  readonly openSeconds: number;
  readonly resumed: number;
  readonly mintSeconds: number;
  readonly dropped: number;
  readonly setup: SetupRun;
  readonly rtt: LatencyRun;
  readonly directRtt: LatencyRun;
  readonly rssBeforeKiB: number;
  readonly rssAfterKiB: number;
  readonly perTunnelKiB: number;
  readonly serverProcesses: ProcessFigure[];
  readonly clientFds: number[];
  readonly backendFds: number[];
  readonly loadDuring: number[];
  /** CPU of the server's processes while the tunnels are held and idle, % of one core. */
  readonly idleCpuPercent: number;
}

/** Fail before starting anything if a process of this run would need more than `ulimit -n`. */
function checkLimits(): number {
  const limit = nofileLimit();
  const need: [string, number][] = [
    [`each of ${WORKERS} oneport workers (2 per tunnel)`, Math.ceil((2 * TUNNELS) / WORKERS) + SLACK],
    [`each of ${WORKERS} HAProxy processes (2 per tunnel)`, Math.ceil((2 * TUNNELS) / WORKERS) + SLACK],
    [`each of ${CLIENTS} client processes (1 per tunnel)`, Math.ceil(TUNNELS / CLIENTS) + SLACK],
    [`each of ${BACKENDS} backend processes (1 per tunnel)`, Math.ceil(TUNNELS / BACKENDS) + SLACK],
  ];
  // The spread over workers / HAProxy processes is not perfect: 10% of head room for it.
  const over = need.filter(([, n], i) => (i < 2 ? n * 1.1 : n) > limit * 0.9);
  if (over.length) {
    throw new Error(
      `ulimit -n is ${limit} per process; ${TUNNELS} tunnels need ${over.map(([what, n]) => `${n} for ${what}`).join(', ')} ` +
        '(with 10% left free). Use more --workers / --clients / --backends, fewer --tunnels, or raise the limit (ulimit -n).',
    );
  }
  const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  const ports = (hi ?? 0) - (lo ?? 0) + 1;
  if (ports < TUNNELS + 2 * SETUPS + 1000) throw new Error(`net.ipv4.ip_local_port_range has ${ports} ports: too few for ${TUNNELS} connections to one address and port`);
  const fileMax = Number(readFileSync('/proc/sys/fs/file-max', 'utf8').trim());
  if (fileMax < 6 * TUNNELS) throw new Error(`fs.file-max is ${fileMax}: too few for ${TUNNELS} tunnels (about 4 descriptors each, both sides, plus the console's)`);
  return limit;
}

interface ClientProc {
  readonly peer: Peer;
  call(m: ClientChildIn, answer: ClientChildOut['type'], timeoutMs: number): Promise<ClientChildOut>;
  /** Tunnels held now, asked beside a pending call (for progress lines). */
  held(): Promise<number>;
}

async function startClient(name: string, work: string, o: ClientChildOptions, peers: Peer[]): Promise<ClientProc> {
  const peer = spawnPeer(name, process.execPath, ['--import', 'tsx', join(BENCH_DIR, 'concurrency-client.ts')], {
    cwd: ROOT,
    ipc: true,
    env: { ...process.env, BENCH_CONCURRENCY_CLIENT: JSON.stringify(o) },
    logFile: join(work, `${name}.log`),
  });
  peers.push(peer);
  await firstMessage(peer, 'ready', 60_000);
  let queue = Promise.resolve();
  const call = (m: ClientChildIn, answer: ClientChildOut['type'], timeoutMs: number): Promise<ClientChildOut> => {
    const p = queue.then(async () => {
      const reply = firstMessage<ClientChildOut>(peer, answer, timeoutMs);
      peer.child.send(m);
      return reply;
    });
    queue = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  };
  const held = async (): Promise<number> => {
    const reply = firstMessage<ClientChildOut>(peer, 'status', 10_000);
    peer.child.send({ type: 'status' } satisfies ClientChildIn);
    const r = await reply;
    return r.type === 'status' ? r.held : 0;
  };
  return { peer, call, held };
}

async function startBackends(work: string, tag: string, peers: Peer[]): Promise<number[]> {
  return Promise.all(
    Array.from({ length: BACKENDS }, async (_, i) => {
      const b = spawnPeer(`backend-${tag}-${i}`, process.execPath, ['--import', 'tsx', join(BENCH_DIR, 'backend-child.ts')], { cwd: ROOT, ipc: true, logFile: join(work, `backend-${tag}-${i}.log`) });
      peers.push(b);
      return { pid: b.pid, port: (await firstMessage<BackendReady>(b, 'ready', 60_000)).port };
    }),
  ).then((list) => {
    backendPids.set(tag, list.map((b) => b.pid));
    return list.map((b) => b.port);
  });
}
const backendPids = new Map<string, number[]>();

/** Tickets for `vm`, minted `parallel` at a time over the control socket. */
async function mint(admin: Admin, vm: string, count: number, parallel = 8): Promise<string[]> {
  const out: string[] = [];
  let left = count;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (left > 0) {
        left--;
        out.push(String((await admin.ticket('bench', vm, 'vnc')).ticket));
      }
    }),
  );
  return out;
}

interface Server {
  readonly name: 'oneport' | 'haproxy';
  /** The root pids of the server (oneport's primary; each HAProxy process): their trees are measured. */
  readonly roots: number[];
  readonly port: number;
  /** Tickets for the `count` next tunnels to `vm` (none for HAProxy). */
  tickets(vm: string, count: number): Promise<string[] | undefined>;
  opener(tls: TlsClientOptions, ticket: () => string): Opener;
}

async function startOneport(work: string, certFile: string, keyFile: string, backendPorts: number[], peers: Peer[]): Promise<Server> {
  // Every client is 127.0.0.1: the node-wide cap must stay above the fair-share threshold (80%)
  // with one address holding everything (admission.ts).
  const maxConnections = Math.ceil((TUNNELS + SETUPS + 100) / 0.75);
  const { gw, port, admin } = await startServe(work, 'oneport', peers, { workers: WORKERS, certFile, keyFile, consolePorts: backendPorts, limits: { maxConnectionsPerAddress: 1_000_000, maxConnections } });
  // Every worker up (they start after the port is bound): as many processes as asked.
  const deadline = Date.now() + 60_000;
  while (serverPids(gw.pid).length < WORKERS + 1 && Date.now() < deadline) await sleep(200);
  return {
    name: 'oneport',
    roots: [gw.pid],
    port,
    tickets: (vm, count) => mint(admin, vm, count),
    opener: (tls, ticket) => connectOpener(port, 'bench-0', ticket, tls),
  };
}

async function startHaproxy(bin: string, work: string, pemFile: string, backendPorts: number[], peers: Peer[]): Promise<Server> {
  const port = await freePort();
  const keys = join(work, 'haproxy-ticket-keys');
  // One TLS session ticket key for every process, as oneport shares one over its workers.
  writeFileSync(keys, `${Array.from({ length: 3 }, () => randomBytes(80).toString('base64')).join('\n')}\n`, { mode: 0o600 });
  const perProcess = Math.ceil(((TUNNELS + SETUPS) / WORKERS) * 1.5) + 100;
  const cfg = join(work, 'haproxy.cfg');
  writeFileSync(
    cfg,
    [
      'global',
      '    nbthread 1',
      `    maxconn ${perProcess}`,
      'defaults',
      '    mode tcp',
      '    timeout connect 5s',
      '    timeout client 10m',
      '    timeout server 10m',
      'frontend bench',
      `    bind 127.0.0.1:${port} ssl crt ${pemFile} tls-ticket-keys ${keys}`,
      '    default_backend console',
      'backend console',
      '    balance roundrobin',
      ...backendPorts.map((p, i) => `    server backend${i} 127.0.0.1:${p}`),
      '',
    ].join('\n'),
  );
  const roots: number[] = [];
  for (let i = 0; i < WORKERS; i++) {
    const hp = spawnPeer(`haproxy-${i}`, bin, ['-db', '-f', cfg], { logFile: join(work, `haproxy-${i}.log`) });
    peers.push(hp);
    await waitAccepting(hp, port);
    roots.push(hp.pid);
  }
  return { name: 'haproxy', roots, port, tickets: () => Promise.resolve(undefined), opener: (tls) => tlsOpener(port, tls) };
}

function serverFigures(s: Server): ProcessFigure[] {
  const out: ProcessFigure[] = [];
  for (const root of s.roots) {
    for (const [i, pid] of serverPids(root).entries()) {
      out.push({ role: s.name === 'oneport' ? (i === 0 ? 'primary' : `worker ${i}`) : `process ${s.roots.indexOf(root) + 1}`, pid, fds: fdCount(pid), rssKiB: rssKiB(pid) });
    }
  }
  return out;
}
/** A server's processes: tsx's esbuild helper (a child of the primary when run from source) is not one. */
function serverPids(root: number): number[] {
  return treePids(root).filter((p) => !/esbuild/.test(comm(p)));
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}
const rssSum = (f: ProcessFigure[]): number => f.reduce((n, p) => n + p.rssKiB, 0);

async function phase(name: 'oneport' | 'haproxy', work: string, cert: ReturnType<typeof benchCertificate>, haproxyBin: string | undefined): Promise<Phase> {
  const peers: Peer[] = [];
  try {
    const backendPorts = await startBackends(work, name, peers);
    const server = name === 'oneport' ? await startOneport(work, cert.certFile, cert.keyFile, backendPorts, peers) : await startHaproxy(haproxyBin as string, work, cert.pemFile, backendPorts, peers);
    log(`${name}: ${server.roots.length === 1 ? `${serverFigures(server).length} processes` : `${server.roots.length} processes`} on 127.0.0.1:${server.port}, backends on ${backendPorts.join(', ')}`);
    const clients = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) =>
        startClient(`client-${name}-${i}`, work, { port: server.port, ...(name === 'oneport' ? { vm: `bench-${i % BACKENDS}` } : {}), tls: cert.tlsOpts, concurrency: CLIENT_CONCURRENCY, resume: RESUME }, peers),
      ),
    );
    // Warm up (code paths, TLS contexts) before the baseline, as bench/run.ts's idle memory does.
    for (const c of clients) await c.call({ type: 'open', count: 20, tickets: await server.tickets(`bench-${clients.indexOf(c) % BACKENDS}`, 20) }, 'opened', 120_000);
    for (const c of clients) await c.call({ type: 'close' }, 'closed', 30_000);
    await sleep(1500);
    const rssBeforeKiB = rssSum(serverFigures(server));

    // Fill: every client process opens its share in batches, tickets minted right before each.
    log(`${name}: opening ${TUNNELS} idle tunnels from ${CLIENTS} processes (${CLIENT_CONCURRENCY} at once each${RESUME ? ', TLS resumption' : ''})`);
    const t0 = process.hrtime.bigint();
    let opened = 0;
    let resumed = 0;
    let mintSeconds = 0;
    let openErrors = 0;
    let firstOpenError: string | undefined;
    const progress = setInterval(() => {
      void Promise.all(clients.map((c) => c.held())).then(
        (n) => log(`${name}: ${n.reduce((a, b) => a + b, 0)} held, ${openErrors} errors so far, load ${load().join(' ')}`),
        () => undefined,
      );
    }, 15_000);
    try {
      await Promise.all(
        clients.map(async (c, i) => {
          let left = Math.floor(TUNNELS / CLIENTS) + (i < TUNNELS % CLIENTS ? 1 : 0);
          // The next batch's tickets are minted while this batch opens (a batch opens well within
          // the tickets' 60 s).
          const mintBatch = async (n: number): Promise<{ n: number; tickets: string[] | undefined }> => {
            const m0 = process.hrtime.bigint();
            const tickets = await server.tickets(`bench-${i % BACKENDS}`, n);
            mintSeconds += Number(process.hrtime.bigint() - m0) / 1e9;
            return { n, tickets };
          };
          const take = (): Promise<{ n: number; tickets: string[] | undefined }> | undefined => {
            const n = Math.min(BATCH, left);
            left -= n;
            return n > 0 ? mintBatch(n) : undefined;
          };
          let next = take();
          while (next) {
            const { n, tickets } = await next;
            next = take();
            const r = await c.call({ type: 'open', count: n, tickets }, 'opened', 600_000);
            if (r.type !== 'opened') continue;
            opened += r.ok;
            resumed += r.resumed;
            openErrors += r.errors;
            firstOpenError ??= r.firstError;
          }
        }),
      );
    } finally {
      clearInterval(progress);
    }
    const openSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    log(`${name}: ${opened} tunnels open in ${openSeconds.toFixed(1)} s (${(opened / openSeconds).toFixed(0)}/s; ${resumed} TLS resumed; minting took ${mintSeconds.toFixed(1)} s over all clients), ${openErrors} errors${firstOpenError ? ` (first: ${firstOpenError})` : ''}`);
    await sleep(2000);
    const held = serverFigures(server);
    // What holding the tunnels costs with nothing moving: CPU of the server's processes over 10 s.
    const cpu = (): number => server.roots.reduce((n, r) => n + treeCpuSeconds(r), 0);
    const c0 = cpu();
    await sleep(10_000);
    const idleCpuPercent = (cpu() - c0) * 10;
    log(`${name}: ${idleCpuPercent.toFixed(1)}% of a core while holding them idle`);
    const loadDuring = load();

    // At that load: new sequential tunnels (full handshakes), then round trips.
    const pool = (await server.tickets('bench-0', SETUPS + 10)) ?? [];
    const s = await setup(server.opener(cert.tlsOpts, () => pool.pop() ?? 'none-left'), SETUPS, 5);
    log(`${name}: setup p50 ${s.p50Ms.toFixed(1)} ms, p99 ${s.p99Ms.toFixed(1)} ms, ${s.failures} failed${s.firstError ? ` (${s.firstError})` : ''}`);
    const one = (await server.tickets('bench-0', 1)) ?? [];
    const rtt = await latency(server.opener(cert.tlsOpts, () => one.pop() ?? 'none-left'), PINGS, 200, 64);
    const directRtt = await latency(tcpOpener(backendPorts[0] as number), PINGS, 200, 64);
    log(`${name}: RTT p50 ${rtt.p50Us.toFixed(0)} µs, p99 ${rtt.p99Us.toFixed(0)} µs; direct TCP p50 ${directRtt.p50Us.toFixed(0)} µs, p99 ${directRtt.p99Us.toFixed(0)} µs`);

    // Every held tunnel still open?
    let dropped = 0;
    const clientFds: number[] = [];
    for (const c of clients) {
      const st = await c.call({ type: 'status' }, 'status', 30_000);
      if (st.type === 'status') {
        dropped += st.dropped;
        clientFds.push(st.fds);
      }
    }
    const backendFds = (backendPids.get(name) ?? []).map(fdCount);
    for (const c of clients) await c.call({ type: 'close' }, 'closed', 60_000).catch(() => undefined);
    const rssAfterKiB = rssSum(held);
    return {
      server: name,
      processes: held.length,
      tunnels: TUNNELS,
      opened,
      openErrors,
      firstOpenError,
      openSeconds,
      resumed,
      mintSeconds,
      dropped,
      setup: s,
      rtt: { ...rtt, samplesUs: [] },
      directRtt: { ...directRtt, samplesUs: [] },
      rssBeforeKiB,
      rssAfterKiB,
      perTunnelKiB: (rssAfterKiB - rssBeforeKiB) / Math.max(1, opened),
      serverProcesses: held,
      clientFds,
      backendFds,
      loadDuring,
      idleCpuPercent,
    };
  } finally {
    await stopAll(peers);
  }
}

function report(phases: Phase[], loadBefore: number[], loadAfter: number[], limit: number): string {
  const f = (x: number | undefined, d = 1): string => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '-');
  const o = phases.find((p) => p.server === 'oneport');
  const h = phases.find((p) => p.server === 'haproxy');
  const ratio = (a: number | undefined, b: number | undefined): string => (a !== undefined && b !== undefined && b > 0 ? `${(a / b).toFixed(2)}x` : '-');
  const added = (p: Phase | undefined, k: 'p50Us' | 'p99Us'): number | undefined => (p ? p.rtt[k] - p.directRtt[k] : undefined);
  const row = (what: string, get: (p: Phase) => number, d = 1): string => `| ${what} | ${o ? f(get(o), d) : '-'} | ${h ? f(get(h), d) : '-'} | ${ratio(o && get(o), h && get(h))} |`;
  return [
    '# Many concurrent tunnels on one node: oneport workers vs HAProxy',
    '',
    `Run ${new Date().toISOString()} on ${os.cpus()[0]?.model ?? '?'} x ${os.cpus().length} (node ${process.version}), \`ulimit -n\` ${limit} per process; ` +
      `load average before ${loadBefore.join(' ')}, after ${loadAfter.join(' ')}${phases.map((p) => `, with ${p.server}'s tunnels held ${p.loadDuring.join(' ')}`).join('')}.`,
    '',
    `Each server holds ${TUNNELS} idle tunnels (TLS client leg, console leg to an echo backend that sends its banner first; a tunnel counts once the banner came back through it), ` +
      `opened by ${CLIENTS} client processes, ${CLIENT_CONCURRENCY} at once each${RESUME ? ' with TLS session resumption' : ''}, tickets minted ${BATCH} at a time, while the batch before opens. ` +
      `oneport: \`oneport serve\` with \`workers: ${WORKERS}\` (CONNECT in TLS with a ticket). HAProxy: ${WORKERS} processes with \`nbthread 1\` sharing the port (SO_REUSEPORT; one process with \`nbthread 2\` would need 2 descriptors per tunnel, ${2 * TUNNELS} in all${2 * TUNNELS > limit ? ', over this machine\'s limit' : ''}), TLS to TCP, one shared TLS ticket key. ` +
      `The console legs end in ${BACKENDS} backend processes. At that load: ${SETUPS} new sequential tunnels (full TLS handshake, CONNECT, banner, 4-byte echo, close), then ${PINGS} 64-byte round trips over one tunnel and over direct TCP to the backend. ` +
      'The load generator shares the 2 cores with the servers.',
    '',
    '| at that load | oneport | HAProxy | oneport / HAProxy |',
    '|---|---|---|---|',
    row('tunnels held (banner read)', (p) => p.opened - p.dropped, 0),
    row('errors opening / dropped while held', (p) => p.openErrors + p.dropped, 0),
    row('opening rate, tunnels/s (oneport: with ticket minting)', (p) => p.opened / p.openSeconds, 0),
    row('of them TLS resumed', (p) => p.resumed, 0),
    row('setup p50, ms', (p) => p.setup.p50Ms),
    row('setup p99, ms (target < 50)', (p) => p.setup.p99Ms),
    row('setup failures', (p) => p.setup.failures, 0),
    row('RTT p50, µs', (p) => p.rtt.p50Us, 0),
    row('RTT p99, µs (target < 1000)', (p) => p.rtt.p99Us, 0),
    row('direct TCP RTT p50, µs', (p) => p.directRtt.p50Us, 0),
    row('direct TCP RTT p99, µs', (p) => p.directRtt.p99Us, 0),
    row('added RTT p50, µs', (p) => added(p, 'p50Us') as number, 0),
    row('added RTT p99, µs', (p) => added(p, 'p99Us') as number, 0),
    row('CPU holding them idle, % of a core', (p) => p.idleCpuPercent),
    row('RSS of all server processes, MiB', (p) => p.rssAfterKiB / 1024, 0),
    row('RSS growth per tunnel, KiB', (p) => p.perTunnelKiB),
    '',
    `Added round trip p50, oneport minus HAProxy: ${o && h ? `${f((added(o, 'p50Us') ?? 0) - (added(h, 'p50Us') ?? 0), 0)} µs (target: within 30 µs)` : '-'}.`,
    '',
    '## Descriptors and memory per process, tunnels held',
    '',
    '| server | process | descriptors | RSS MiB |',
    '|---|---|---|---|',
    ...phases.flatMap((p) => p.serverProcesses.map((q) => `| ${p.server} | ${q.role} | ${q.fds} | ${f(q.rssKiB / 1024, 0)} |`)),
    '',
    ...phases.map((p) => `${p.server}: client processes ${p.clientFds.join(', ')} descriptors; backend processes ${p.backendFds.join(', ')}.${p.firstOpenError ? ` First error opening: ${p.firstOpenError}.` : ''}`),
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const limit = checkLimits();
  const work = mkdtempSync(join(os.tmpdir(), 'oneport-bench-concurrency-'));
  process.on('exit', () => rmSync(work, { recursive: true, force: true }));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
  const loadBefore = load();
  const cert = benchCertificate(work);
  const haproxyBin = ['/usr/sbin/haproxy', '/usr/bin/haproxy'].find((p) => existsSync(p));
  if (!haproxyBin && ONLY.has('haproxy')) log('HAProxy not installed: oneport alone');
  const phases: Phase[] = [];
  if (ONLY.has('oneport')) phases.push(await phase('oneport', work, cert, haproxyBin));
  if (ONLY.has('haproxy') && haproxyBin) phases.push(await phase('haproxy', work, cert, haproxyBin));
  const text = report(phases, loadBefore, load(), limit);
  log(`\n${text}`);
  if (!args['no-write']) {
    writeFileSync(join(BENCH_DIR, 'CONCURRENCY.md'), text);
    writeFileSync(
      join(BENCH_DIR, 'concurrency-results.json'),
      `${JSON.stringify({ loadBefore, loadAfter: load(), ulimitN: limit, tunnels: TUNNELS, workers: WORKERS, clients: CLIENTS, backends: BACKENDS, setups: SETUPS, pings: PINGS, resume: RESUME, phases }, null, 2)}\n`,
    );
  }
  const bad = phases.filter((p) => p.opened < p.tunnels || p.dropped > 0 || p.setup.failures > 0);
  if (bad.length) throw new Error(`not every tunnel held: ${bad.map((p) => `${p.server} ${p.opened}/${p.tunnels} opened, ${p.dropped} dropped, ${p.setup.failures} setups failed`).join('; ')}`);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    log(`bench:concurrency failed: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  },
);
