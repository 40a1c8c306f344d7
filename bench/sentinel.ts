/**
 * A Redis master failover under Sentinel, as users see it (issue 15): three gateway processes on
 * a master, a replica and a sentinel (real redis-server processes); the master is SIGKILLed while
 * a signed-in user calls the API on every node every 50 ms and asks for new tunnels. Per run:
 *
 *   switch        master SIGKILL -> the sentinel publishes `+switch-master` (Sentinel's own time)
 *   first tunnel  master SIGKILL -> a new ticket and a CONNECT with it succeed (both need Redis),
 *                 to a VM on the entry node and to one on another node (which the entry node must
 *                 hear again first: the heartbeats lapsed while Redis was away)
 *   beyond switch first tunnel - switch: what oneport adds (target: at most 500 ms)
 *   API failures  signed-in API calls that failed during the failover (target: none)
 *
 *   npm run bench:sentinel                 5 runs
 *   npm run bench:sentinel -- --runs 2
 *
 * Writes bench/SENTINEL.md and bench/sentinel-results.json.
 */
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { startRedis, startSentinel } from '../test/helpers/redis.js';
import { adminToken, electedLeader, makeCluster, type ClusterNode } from '../test/helpers/cluster.js';
import { basic, rawRequest } from '../test/helpers/net.js';
import { eventually } from '../test/helpers/wait.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({ options: { runs: { type: 'string', default: '5' } } });
const runs = Number(args.runs);

interface Run {
  switchMs: number;
  firstTunnelMs: number;
  beyondSwitchMs: number;
  remoteFirstTunnelMs: number;
  remoteBeyondSwitchMs: number;
  apiCalls: number;
  apiFailures: number;
}

/** An echo console greeting like an RFB server. */
async function echoConsole(teardowns: Array<() => unknown>): Promise<number> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.write('RFB 003.008\n');
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  teardowns.push(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

/**
 * Ask for tickets and CONNECT with them until one works; when it did. Tickets come from the admin
 * API (`POST /api/tickets`): a user's own are limited to 60 a minute, and this asks every 20 ms.
 */
async function firstTunnel(entry: ClusterNode, admin: string, vm: string, since: number): Promise<number> {
  let last = '';
  while (Date.now() - since < 30_000) {
    const ticket = await entry.api<{ ticket?: string }>('POST', '/api/tickets', { token: admin, body: { user: 'alice', vm, protocol: 'vnc' } }).catch((e: unknown) => ({ status: 0, body: { error: String(e) } }));
    last = `ticket ${ticket.status} ${JSON.stringify(ticket.body).slice(0, 200)}`;
    if ('ticket' in ticket.body && ticket.body.ticket) {
      const res = await rawRequest(entry.port, `CONNECT ${vm}:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket.body.ticket)}\r\n\r\n`).catch(() => undefined);
      res?.socket.destroy();
      last = `CONNECT ${res?.status ?? 'failed'} ${res?.body?.slice(0, 200) ?? ''}`;
      if (res?.status === 200) return Date.now();
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${vm}: no new tunnel within 30 s of the master failure; last: ${last}`);
}

async function oneRun(i: number): Promise<Run> {
  const teardowns: Array<() => unknown> = [];
  const t = { teardown: (fn: () => unknown) => teardowns.push(fn) };
  try {
    const master = await startRedis(t, { args: ['--repl-diskless-sync-delay', '0'] });
    await startRedis(t, { args: ['--replicaof', '127.0.0.1', String(master.port)], waitForLines: ['MASTER <-> REPLICA sync: Finished with success'] });
    const sentinel = await startSentinel(t, { masterPort: master.port, replicas: 1 });
    const cluster = makeCluster(t, master.url, { cluster: { redis: { sentinels: sentinel.clientOptions.sentinels, name: sentinel.clientOptions.name } } });
    const nodes: ClusterNode[] = await Promise.all(['s1', 's2', 's3'].map((id) => cluster.start(id)));
    const leader = await electedLeader(nodes);
    const admin = await adminToken(leader);
    const consolePort = await echoConsole(teardowns);
    await leader.api('PUT', '/api/users/alice', { token: admin, body: { password: 'alice-password-1' } });
    const entry = nodes.find((n) => n !== leader) as ClusterNode;
    await leader.api('PUT', '/api/vms/remote', { token: admin, body: { node: leader.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: consolePort }], users: ['alice'] } });
    await leader.api('PUT', '/api/vms/local', { token: admin, body: { node: entry.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: consolePort }], users: ['alice'] } });
    const tokens = await Promise.all(
      nodes.map(async (n) =>
        eventually(async () => {
          const r = await n.api<{ token?: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } });
          return r.body.token;
        }, 10_000, `login on ${n.id}`),
      ),
    );
    // Let the replica hold every write before the kill, as the test does.
    const m = new Redis(master.url);
    await m.wait(1, 5000);
    m.disconnect();

    const watcher = new Redis({ host: '127.0.0.1', port: sentinel.port });
    teardowns.push(() => watcher.disconnect());
    await watcher.subscribe('+switch-master');
    const switched = new Promise<number>((resolve) => watcher.once('message', () => resolve(Date.now())));

    let apiCalls = 0;
    let apiFailures = 0;
    let polling = true;
    const poll = async (n: ClusterNode, token: string): Promise<void> => {
      while (polling) {
        const r = await n.api('GET', '/api/desktops', { token }).catch(() => ({ status: 0 }));
        apiCalls++;
        if (r.status !== 200) apiFailures++;
        await new Promise((res) => setTimeout(res, 50));
      }
    };
    const pollers = nodes.map((n, k) => poll(n, tokens[k] as string));

    const killedAt = Date.now();
    await master.kill();
    // The admin logged in on the leader; the entry node checks that session from its own copy.
    const [localAt, remoteAt] = await Promise.all([firstTunnel(entry, admin, 'local', killedAt), firstTunnel(entry, admin, 'remote', killedAt)]);
    const switchAt = await Promise.race([switched, new Promise<number>((r) => setTimeout(() => r(Number.NaN), 10_000))]);
    // Keep calling a little past the first tunnel: a failure right after it counts too.
    await new Promise((r) => setTimeout(r, 1000));
    polling = false;
    await Promise.all(pollers);
    const run = {
      switchMs: switchAt - killedAt,
      firstTunnelMs: localAt - killedAt,
      beyondSwitchMs: localAt - switchAt,
      remoteFirstTunnelMs: remoteAt - killedAt,
      remoteBeyondSwitchMs: remoteAt - switchAt,
      apiCalls,
      apiFailures,
    };
    process.stderr.write(`run ${i + 1}/${runs}: switch ${run.switchMs} ms, first tunnel ${run.firstTunnelMs} ms (+${run.beyondSwitchMs}), through another node ${run.remoteFirstTunnelMs} ms (+${run.remoteBeyondSwitchMs}), API ${apiFailures}/${apiCalls} failed\n`);
    return run;
  } finally {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const results: Run[] = [];
  for (let i = 0; i < runs; i++) results.push(await oneRun(i));
  const sorted = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);
  const p50 = (xs: number[]): number => sorted(xs)[Math.floor(xs.length / 2)] ?? Number.NaN;
  const max = (xs: number[]): number => Math.max(...xs);
  const col = (k: keyof Run): number[] => results.map((r) => r[k]);
  const date = new Date().toISOString();
  writeFileSync(join(BENCH_DIR, 'sentinel-results.json'), `${JSON.stringify({ date, node: process.version, runs: results }, null, 2)}\n`);
  const md = `# Redis master failover under Sentinel

Generated by \`npm run bench:sentinel\` (bench/sentinel.ts) on ${date}: three gateway processes, a
Redis master, a replica and one sentinel (down-after 500 ms), real processes on one machine
(${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}, load average after: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}).
The master is SIGKILLed while a signed-in user calls \`GET /api/desktops\` on every node every 50 ms.

| measurement | runs | p50 | max | unit |
|---|---:|---:|---:|---|
| master SIGKILL -> Sentinel publishes +switch-master | ${results.length} | ${p50(col('switchMs'))} | ${max(col('switchMs'))} | ms |
| master SIGKILL -> first new ticket + tunnel, VM on the entry node | ${results.length} | ${p50(col('firstTunnelMs'))} | ${max(col('firstTunnelMs'))} | ms |
| ... beyond Sentinel's switch (target at most 500) | ${results.length} | ${p50(col('beyondSwitchMs'))} | ${max(col('beyondSwitchMs'))} | ms |
| master SIGKILL -> first new ticket + tunnel, VM on another node | ${results.length} | ${p50(col('remoteFirstTunnelMs'))} | ${max(col('remoteFirstTunnelMs'))} | ms |
| ... beyond Sentinel's switch | ${results.length} | ${p50(col('remoteBeyondSwitchMs'))} | ${max(col('remoteBeyondSwitchMs'))} | ms |
| signed-in API calls failed during the failover (target 0) | ${results.length} | ${p50(col('apiFailures'))} | ${max(col('apiFailures'))} | of ${p50(col('apiCalls'))} |
`;
  writeFileSync(join(BENCH_DIR, 'SENTINEL.md'), md);
  process.stdout.write(md);
}

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => process.exit());
