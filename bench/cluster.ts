/**
 * Cluster benchmark: how fast the cluster reacts, measured on real processes and a real
 * redis-server on this machine, with the default timing settings (lease 1200 ms, heartbeat 500 ms,
 * node timeout 1500 ms).
 *
 *   leader failover    SIGKILL of the leader -> a survivor logs `leader-elected` (log timestamps)
 *   VM failover        SIGKILL of a VM's owner -> first successful tunnel to it through another
 *                      node, landing on the replica (the console stays up, as a VM restarted by
 *                      the hypervisor would be; the hook is not configured)
 *   mirror propagation a write on one mirror -> the change visible in every other mirror (three
 *                      RedisDirectory mirrors in this process, 10,000 VMs loaded)
 *   lookup             one VM lookup from the mirror, next to one HGET round trip to the same Redis
 *                      (what a gateway without a mirror would pay per tunnel)
 *
 *   npm run bench:cluster               10 runs of each failover
 *   npm run bench:cluster -- --quick    3 runs
 *
 * Writes bench/CLUSTER.md and bench/cluster-results.json.
 */
import { writeFileSync } from 'node:fs';
import { once } from 'node:events';
import net from 'node:net';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { startRedis } from '../test/helpers/redis.js';
import { adminToken, logTime, makeCluster, type ClusterNode, type LogLine } from '../test/helpers/cluster.js';
import { rawRequest, basic } from '../test/helpers/net.js';
import { deadline, eventually } from '../test/helpers/wait.js';
import { RedisDirectory } from '../gateway/directory/redis.js';
import { toVmRecord, vmSchema, type VmRecord } from '../gateway/directory/directory.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({ options: { quick: { type: 'boolean', default: false }, runs: { type: 'string' }, 'session-runs': { type: 'string' } } });
const runs = Number(args.runs ?? (args.quick ? 3 : 10));
/** Session-continuity distributions: at least 20 runs each (issue 4). */
const sessionRuns = Number(args['session-runs'] ?? (args.quick ? 5 : 20));

const teardowns: Array<() => unknown> = [];
const t = { teardown: (fn: () => unknown) => teardowns.push(fn) };

/** Every wait in the benchmark is bounded: a stuck step fails the run instead of hanging it. */
function withTimeout<T>(p: Promise<T>, what: string, ms = 30_000): Promise<T> {
  return Promise.race([p, deadline(ms, what)]);
}

interface Dist {
  n: number;
  p50: number;
  p95: number;
  max: number;
  min: number;
}
function dist(xs: number[]): Dist {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))] ?? NaN;
  return { n: s.length, p50: at(0.5), p95: at(0.95), max: s[s.length - 1] ?? NaN, min: s[0] ?? NaN };
}

async function echoConsole(): Promise<number> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.write('RFB 003.008\n');
    s.pipe(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  teardowns.push(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

async function leaderOf(nodes: ClusterNode[], after: number[]): Promise<{ node: ClusterNode; line: LogLine }> {
  return Promise.race(nodes.map((n, i) => n.waitFor((l) => l.event === 'leader-elected', 20_000, { after: after[i] ?? 0 }).then((line) => ({ node: n, line }))));
}

async function main(): Promise<void> {
  const started = Date.now();
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { log: { level: 'info' } });
  let seq = 0;
  const live: ClusterNode[] = await Promise.all([1, 2, 3].map(() => cluster.start(`b${++seq}`)));

  // ---- leader failover ---------------------------------------------------------------------
  const leaderMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const { node: leader } = await leaderOf(live, live.map(() => 0));
    const survivors = live.filter((n) => n !== leader);
    const marks = survivors.map((n) => n.logs.length);
    const killedAt = Date.now();
    leader.kill('SIGKILL');
    const { line } = await leaderOf(survivors, marks);
    leaderMs.push(logTime(line) - killedAt);
    live.splice(live.indexOf(leader), 1);
    live.push(await cluster.start(`b${++seq}`));
    process.stderr.write(`leader failover ${i + 1}/${runs}: ${leaderMs.at(-1)} ms\n`);
  }

  // ---- VM failover: owner SIGKILL -> first tunnel through another node ------------------------
  const vmMs: number[] = [];
  const promoteMs: number[] = [];
  const consolePort = await echoConsole();
  for (let i = 0; i < runs; i++) {
    const { node: leader } = await leaderOf(live, live.map(() => 0));
    const token = await adminToken(leader);
    const [owner, replica] = live.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
    const name = `desk${i}`;
    await leader.api('PUT', `/api/vms/${name}`, { token, body: { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: consolePort }], users: ['root'] } });
    for (const n of live) {
      for (;;) {
        const r = await n.api<{ node?: string }>('GET', `/api/vms/${name}`, { token });
        if (r.body.node === owner.id) break;
        await new Promise((res) => setTimeout(res, 20));
      }
    }
    const mark = leader.logs.length;
    const killedAt = Date.now();
    owner.kill('SIGKILL');
    let first = 0;
    for (;;) {
      const ticket = await leader.api<{ ticket?: string }>('POST', `/api/desktops/${name}/tickets`, { token, body: { protocol: 'vnc' } });
      if (ticket.body.ticket) {
        const res = await rawRequest(leader.port, `CONNECT ${name}:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('root', ticket.body.ticket)}\r\n\r\n`).catch(() => undefined);
        res?.socket.destroy();
        if (res?.status === 200) {
          first = Date.now();
          break;
        }
      }
      if (Date.now() - killedAt > 30_000) throw new Error('VM failover did not complete within 30 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    vmMs.push(first - killedAt);
    const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === name, 5_000, { after: mark });
    promoteMs.push(logTime(moved) - killedAt);
    live.splice(live.indexOf(owner), 1);
    live.push(await cluster.start(`b${++seq}`));
    process.stderr.write(`VM failover ${i + 1}/${runs}: promoted after ${promoteMs.at(-1)} ms, first tunnel after ${vmMs.at(-1)} ms\n`);
  }
  // ---- session continuity: rerouted sessions and transparent resume -------------------------
  // A console on a fixed port that can be "moved": it closes with its host and opens again on the
  // replica (same address here, one machine), greeting each connection with an RFB banner.
  let sessionConsole: net.Server | undefined;
  const sessionSockets = new Set<net.Socket>();
  const sessionPort = await new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(p));
    });
  });
  const startConsole = async (): Promise<void> => {
    sessionConsole = net.createServer((sock) => {
      sessionSockets.add(sock);
      sock.on('error', () => {});
      sock.on('close', () => sessionSockets.delete(sock));
      sock.write('RFB 003.008\n');
      sock.pipe(sock);
    });
    sessionConsole.listen(sessionPort, '127.0.0.1');
    await once(sessionConsole, 'listening');
  };
  const stopConsole = async (): Promise<void> => {
    for (const sock of sessionSockets) sock.destroy();
    if (sessionConsole?.listening) await new Promise<void>((r) => sessionConsole!.close(() => r()));
  };
  teardowns.push(stopConsole);
  await startConsole();
  const { WebSocket } = await import('ws');
  const { OneportChannel } = await import('../web/oneport-channel.js');
  /** Open a WebSocket tunnel; resolves at its first byte from the console. */
  const firstByte = (node: ClusterNode, query: string): Promise<{ ws: InstanceType<typeof WebSocket>; at: number }> =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(`wss://127.0.0.1:${node.port}/tunnel/sdesk/vnc?${query}`, ['binary'], { ca: cluster.ca.cert });
      ws.on('error', () => {});
      ws.once('message', () => resolve({ ws, at: Date.now() }));
      ws.once('close', (code: number) => reject(new Error(`closed ${code}`)));
    });
  const killToByte: number[] = [];
  const moveToByte: number[] = [];
  const resumeMs: number[] = [];
  const userToken = async (node: ClusterNode, token: string): Promise<{ ticket: string; resume: string }> =>
    (await node.api<{ ticket: string; resume: string }>('POST', '/api/desktops/sdesk/tickets', { token, body: { protocol: 'vnc' } })).body;
  for (let i = 0; i < sessionRuns; i++) {
    const { node: leader } = await leaderOf(live, live.map(() => 0));
    const token = await adminToken(leader);
    // Every live node must be up in the leader's view first (a move to a node it has not seen is refused).
    await eventually(async () => {
      const view = (await leader.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token })).body;
      return live.every((n) => view.nodes.some((v) => v.id === n.id && v.state === 'up')) ? true : undefined;
    }, 30_000, 'all nodes up');
    const others = live.filter((n) => n !== leader);
    const [owner, replica] = others as [ClusterNode, ClusterNode];
    const entry = leader; // the entry node survives the owner
    await leader.api('PUT', '/api/vms/sdesk', { token, body: { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: sessionPort }], users: ['root'] } });
    for (const n of live) {
      for (;;) {
        const r = await n.api<{ node?: string; state?: string }>('GET', '/api/vms/sdesk', { token });
        if (r.body.node === owner.id && r.body.state === 'running') break;
        await new Promise((res) => setTimeout(res, 20));
      }
    }
    // (1) planned move mid-session: move -> the client's first byte from the new owner.
    let t1 = await userToken(entry, token);
    let s1 = await firstByte(entry, `ticket=${t1.ticket}`);
    const moveClosed = once(s1.ws, 'close');
    const movedAt = Date.now();
    const moved = await leader.api('POST', '/api/vms/sdesk/move', { token, body: { node: replica.id } });
    if (moved.status !== 200) throw new Error(`move refused: ${moved.status} ${JSON.stringify(moved.body)}`);
    await withTimeout(moveClosed, 'the moved session to be closed');
    s1 = await firstByte(entry, `resume=${encodeURIComponent(t1.resume)}`);
    moveToByte.push(s1.at - movedAt);
    s1.ws.close();
    // Move back so the owner dies with the VM on it.
    await leader.api('POST', '/api/vms/sdesk/move', { token, body: { node: owner.id } });
    for (;;) {
      const r = await entry.api<{ node?: string }>('GET', '/api/vms/sdesk', { token });
      if (r.body.node === owner.id) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    // (2) owner SIGKILL mid-session -> the client's first byte from the replica's console.
    t1 = await userToken(entry, token);
    s1 = await firstByte(entry, `ticket=${t1.ticket}`);
    const dropped = once(s1.ws, 'close');
    const killedAt = Date.now();
    owner.kill('SIGKILL');
    await stopConsole(); // the console dies with its host...
    await startConsole(); // ...and the hypervisor has it running on the replica
    await withTimeout(dropped, 'the killed session to be closed');
    const back = await withTimeout(firstByte(entry, `resume=${encodeURIComponent(t1.resume)}`), 'the first byte after the owner died');
    killToByte.push(back.at - killedAt);
    back.ws.close();
    live.splice(live.indexOf(owner), 1);
    live.push(await cluster.start(`b${++seq}`));
    // (3) transparent resume: cut the client leg, time to the session resumed.
    const t2 = await userToken(entry, token);
    await new Promise<void>((resolve, reject) => {
      let cutAt = 0;
      const ch = new OneportChannel(`wss://127.0.0.1:${entry.port}/tunnel/sdesk/vnc?ticket=${t2.ticket}`, {
        resume: t2.resume,
        WebSocket: WebSocket as never,
        wsOptions: { ca: cluster.ca.cert },
        onStatus: (st) => {
          if (st.state === 'resumed') {
            resumeMs.push(performance.now() - cutAt);
            ch.close();
            resolve();
          } else if (st.state === 'closed' && cutAt && resumeMs.length <= i) reject(new Error('channel closed instead of resuming'));
        },
      });
      ch.onopen = () => {
        cutAt = performance.now();
        (ch.leg as { _socket?: net.Socket })._socket?.destroy();
      };
    });
    process.stderr.write(`session run ${i + 1}/${sessionRuns}: move->byte ${moveToByte.at(-1)} ms, kill->byte ${killToByte.at(-1)} ms, resume ${resumeMs.at(-1)?.toFixed(1)} ms\n`);
  }

  for (const n of live) n.kill('SIGKILL');

  // ---- mirror propagation and lookup, in-process -------------------------------------------
  const prefix = 'bench:{dir}:';
  const mirrors = await Promise.all([0, 1, 2].map(() => RedisDirectory.open({ redis: redis.url, prefix })));
  teardowns.push(() => Promise.all(mirrors.map((m) => m.close())));
  const vm = (name: string): VmRecord => toVmRecord(vmSchema.parse({ name, node: 'n1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5901 }] }));
  const loader = new Redis(redis.url);
  teardowns.push(() => loader.disconnect());
  const pipe = loader.pipeline();
  for (let i = 0; i < 10_000; i++) pipe.hset(`${prefix}vms`, `vm${i}`, JSON.stringify(vm(`vm${i}`)));
  await pipe.exec();
  await loader.incr(`${prefix}version`); // a version change the mirrors' safety net resyncs on
  await mirrors[0]!.putVm(vm('warm'));
  for (const m of mirrors) while (m.listVms().length < 10_001) await once(m, 'resync').catch(() => undefined);
  const propagation: number[] = [];
  for (let i = 0; i < 200; i++) {
    const name = `p${i}`;
    const seen = mirrors.slice(1).map((m) => new Promise<number>((resolve) => {
      const on = (c: { kind: string; name?: string }): void => {
        if (c.kind === 'vm' && c.name === name) {
          m.removeListener('change', on);
          resolve(performance.now());
        }
      };
      m.on('change', on);
    }));
    const t0 = performance.now();
    await mirrors[0]!.putVm(vm(name));
    const times = await Promise.all(seen);
    propagation.push(Math.max(...times) - t0);
  }
  const lookups = 1_000_000;
  let sink = 0;
  let t0 = performance.now();
  for (let i = 0; i < lookups; i++) sink += mirrors[1]!.getVm(`vm${i % 10_000}`)?.epoch ?? 0;
  const lookupNs = ((performance.now() - t0) * 1e6) / lookups;
  const hgets = 5_000;
  t0 = performance.now();
  for (let i = 0; i < hgets; i++) sink += (await loader.hget(`${prefix}vms`, `vm${i % 10_000}`))?.length ?? 0;
  const hgetNs = ((performance.now() - t0) * 1e6) / hgets;
  void sink;

  const result = {
    date: new Date().toISOString(),
    seconds: Math.round((Date.now() - started) / 100) / 10,
    node: process.version,
    machine: `${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores`,
    runs,
    leaderFailoverMs: dist(leaderMs),
    vmPromotedMs: dist(promoteMs),
    vmFirstTunnelMs: dist(vmMs),
    mirrorPropagationMs: dist(propagation),
    lookupNs,
    redisHgetNs: hgetNs,
    sessionRuns,
    plannedMoveToFirstByteMs: dist(moveToByte),
    ownerKillToFirstByteMs: dist(killToByte),
    resumeMs: dist(resumeMs),
  };
  writeFileSync(join(BENCH_DIR, 'cluster-results.json'), `${JSON.stringify(result, null, 2)}\n`);
  const row = (what: string, d: Dist, decimals = 0): string => `| ${what} | ${d.n} | ${d.p50.toFixed(decimals)} | ${d.p95.toFixed(decimals)} | ${d.max.toFixed(decimals)} | ms |`;
  const md = `# oneport cluster benchmark

Generated by \`npm run bench:cluster\` (bench/cluster.ts). Real gateway processes and a real
redis-server on one machine; default timing settings (lease 1200 ms, renew 250 ms, heartbeat 500 ms,
node timeout 1500 ms).

- Date: ${result.date} (run took ${result.seconds} s)
- Node: ${result.node}; machine: ${result.machine}; load average after: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}

| measurement | runs | p50 | p95 | max | unit |
|---|---:|---:|---:|---:|---|
${row('leader failover: leader SIGKILL -> new leader elected', result.leaderFailoverMs)}
${row('VM failover: owner SIGKILL -> VM promoted to its replica', result.vmPromotedMs)}
${row('VM failover: owner SIGKILL -> first tunnel to the VM succeeds', result.vmFirstTunnelMs)}
${row('mirror propagation: write -> visible in 2 other mirrors (10k VMs)', result.mirrorPropagationMs, 2)}
${row('session: planned move -> client\'s first byte from the new owner (4001, resume token, reconnect)', result.plannedMoveToFirstByteMs)}
${row('session: owner SIGKILL -> client\'s first byte from the replica\'s console', result.ownerKillToFirstByteMs)}
${row('session: client leg cut -> oneport.v1 session resumed (replayed, live again)', result.resumeMs, 1)}

| lookup | ns per lookup | ratio |
|---|---:|---:|
| VM lookup from the in-memory mirror (10k VMs) | ${lookupNs.toFixed(0)} | 1× |
| HGET round trip to the same Redis (what a mirror-less gateway pays per tunnel) | ${hgetNs.toFixed(0)} | ${(hgetNs / lookupNs).toFixed(0)}× |

Targets (reliability issue): a dead leader PROCESS replaced within 1 s, and a dead owner process's
sessions on the replica within 1 s of its death (first byte): the SIGKILLed process's Redis
connection closes at once and the process watch (cluster.processWatchMs, 250 ms) judges it then,
instead of after the heartbeat timeout (1.5 s) or the lease (1.2 s); a host that goes silent
(SIGSTOP, power loss) is left to those timeouts (bench/RELIABILITY.md). "First tunnel" includes the new owner's console probe and the client's own
retry interval (20 ms). Session goals (issue 4): rerouted within 1 s of the directory change and
within 3 s of the owner's death with default heartbeat settings; resume within 200 ms of the client
reconnecting. The session rows run ${sessionRuns} times each; the entry node is the leader, the
client reconnects as soon as its WebSocket closes.
`;
  writeFileSync(join(BENCH_DIR, 'CLUSTER.md'), md);
  process.stdout.write(md);
}

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
    process.exit();
  });
