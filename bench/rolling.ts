/**
 * Rolling upgrade under load (issue 15): a 3-node cluster on a real redis-server; every node in
 * turn is drained with `--move-vms` (`POST /api/nodes/<id>/drain`, asked at another node), waited
 * for until it exited, and started again; meanwhile
 * - `--sessions` WebSocket clients (plain binary tunnels, not oneport.v1) each send a numbered
 *   message every 100 ms and check the echo; told 4001, a client reconnects at the node the close
 *   names, with a new ticket; any other end is a lost session;
 * - a new CONNECT tunnel is opened every 100 ms through a "balancer" that sends it to a node whose
 *   /readyz said 200 at its last check (checked every 500 ms, as a balancer would); the nodes'
 *   shutdown.unreadyMs is twice that.
 * Printed: new tunnels opened / refused (and how), sessions kept / lost, reconnects, and messages
 * in flight when a session was told to move (lost on plain tunnels: oneport.v1 would replay them).
 *
 *   npm run bench:rolling [-- --sessions 30]
 */
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import { startRedis } from '../test/helpers/redis.js';
import { adminToken, electedLeader, makeCluster, type ClusterNode } from '../test/helpers/cluster.js';
import { clearConnect } from '../test/helpers/scenario.js';
import { startBackend, rawRequest } from '../test/helpers/net.js';
import { deadline, eventually } from '../test/helpers/wait.js';

const { values: args } = parseArgs({ options: { sessions: { type: 'string', default: '30' } } });
const SESSIONS = Number(args.sessions);
/** Twice the balancer's check interval below: it has seen the node unready before clients are sent away. */
const UNREADY_MS = 1000;
const teardowns: Array<() => unknown> = [];
const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };

async function main(): Promise<void> {
  const echo = await startBackend(t);
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { shutdown: { drainMs: 15_000, unreadyMs: UNREADY_MS }, log: { level: 'info' } });
  const ids = ['r1', 'r2', 'r3'];
  const nodes = new Map<string, ClusterNode>();
  for (const id of ids) nodes.set(id, await cluster.start(id));
  const leader = await electedLeader([...nodes.values()]);
  const token = await adminToken(leader);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  for (const [i, id] of ids.entries()) {
    const r = await leader.api('PUT', `/api/vms/d${i}`, { token, body: { node: id, replica: ids[(i + 1) % 3], endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], users: ['alice'] } });
    if (r.status !== 200) throw new Error(`PUT d${i}: ${r.status}`);
  }
  const up = (): ClusterNode[] => [...nodes.values()].filter((n) => n.proc.exitCode === null && n.proc.signalCode === null);
  await eventually(async () => {
    for (const n of up()) {
      const v = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      if (v.body.nodes.filter((x) => x.state === 'up').length < 3) return undefined;
    }
    return true;
  }, 20_000, 'three nodes up');

  // The balancer: nodes whose readyz answered 200 at the last check.
  const healthy = new Set<string>(ids);
  let running = true;
  const checker = (async () => {
    while (running) {
      await Promise.all(
        [...nodes.values()].map(async (n) => {
          const ok = await n.api('GET', '/readyz').then((r) => r.status === 200, () => false);
          if (ok) healthy.add(n.id);
          else healthy.delete(n.id);
        }),
      );
      await new Promise((r) => setTimeout(r, 500));
    }
  })();
  let rr = 0;
  const pick = (): ClusterNode => {
    const h = up().filter((n) => healthy.has(n.id));
    const list = h.length > 0 ? h : up();
    return list[rr++ % list.length]!;
  };
  // One login: the session token is good on every node (shared keys), restarted ones included.
  const alice = (await leader.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const ticket = async (at: ClusterNode, vm: string): Promise<string> => {
    const r = await at.api<{ ticket: string }>('POST', `/api/desktops/${vm}/tickets`, { token: alice, body: { protocol: 'vnc' } });
    if (r.status !== 200) throw new Error(`ticket: ${r.status}`);
    return r.body.ticket;
  };

  const figures = { newTunnels: 0, newRefused: new Map<string, number>(), sessionsLost: new Map<string, number>(), reconnects: 0, reconnectFailures: 0, inFlightAtMove: 0, messages: 0 };
  const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);

  /** One user session: reconnects on 4001, counts anything else as lost. */
  const session = async (i: number): Promise<void> => {
    const vm = `d${i % 3}`;
    let at: ClusterNode = pick();
    let seq = 0;
    while (running) {
      let ws: WebSocket;
      try {
        ws = new WebSocket(`wss://127.0.0.1:${at.port}/tunnel/${vm}/vnc?ticket=${await ticket(at, vm)}`, ['binary'], { ca: cluster.ca.cert });
      } catch {
        figures.reconnectFailures++;
        at = pick();
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      ws.on('error', () => {});
      const outcome = await new Promise<{ code: number; reason: string }>((resolve) => {
        const pending = new Set<number>();
        let timer: NodeJS.Timeout | undefined;
        ws.on('open', () => {
          timer = setInterval(() => {
            if (!running) ws.close(1000);
            const n = seq++;
            pending.add(n);
            ws.send(Buffer.from(`${n};`));
          }, 100);
        });
        ws.on('message', (d: Buffer) => {
          for (const part of d.toString().split(';')) if (part) pending.delete(Number(part)) && figures.messages++;
        });
        ws.on('close', (code: number, reason: Buffer) => {
          clearInterval(timer);
          if (code === 4001) figures.inFlightAtMove += pending.size;
          resolve({ code, reason: reason.toString() });
        });
      });
      if (!running) return;
      if (outcome.code === 4001) {
        figures.reconnects++;
        const named = (JSON.parse(outcome.reason) as { node?: string }).node;
        const target = named !== undefined ? nodes.get(named) : undefined;
        at = target && up().includes(target) ? target : pick();
        continue;
      }
      bump(figures.sessionsLost, String(outcome.code));
      at = pick();
    }
  };
  const sessions = Array.from({ length: SESSIONS }, (_, i) => session(i));

  const opener = (async () => {
    let i = 0;
    while (running) {
      const at = pick();
      const vm = `d${i++ % 3}`;
      try {
        const r = await rawRequest(at.port, clearConnect(await ticket(at, vm), vm), { ca: cluster.ca.cert, timeoutMs: 5000 });
        if (r.status === 200) figures.newTunnels++;
        else bump(figures.newRefused, String(r.status));
        r.socket.destroy();
      } catch (err) {
        bump(figures.newRefused, (err as NodeJS.ErrnoException).code ?? (err as Error).message.slice(0, 40));
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();

  await new Promise((r) => setTimeout(r, 3000));
  const started = Date.now();
  for (const id of ids) {
    const node = nodes.get(id)!;
    const asker = up().find((n) => n.id !== id)!;
    const admin = await asker.admin();
    await admin.drainNode(id, true);
    await admin.close();
    await Promise.race([node.exited(), deadline(30_000, `${id} exiting`)]);
    const t0 = Date.now();
    const again = await cluster.start(id);
    nodes.set(id, again);
    await eventually(async () => {
      const v = await again.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token });
      return v.body.nodes.filter((x) => x.state === 'up').length === 3 ? true : undefined;
    }, 30_000, `${id} back up`);
    process.stderr.write(`${id}: drained, restarted, up again after ${Date.now() - t0} ms\n`);
    await new Promise((r) => setTimeout(r, 2000));
  }
  const elapsed = Date.now() - started;
  running = false;
  await Promise.all([opener, checker, ...sessions]);

  const fmt = (m: Map<string, number>): string => ([...m].map(([k, v]) => `${k}: ${v}`).join(', ') || 'none');
  const refused = [...figures.newRefused.values()].reduce((a, b) => a + b, 0);
  const lost = [...figures.sessionsLost.values()].reduce((a, b) => a + b, 0);
  console.log(`rolling drain (--move-vms) + restart of 3 nodes in ${(elapsed / 1000).toFixed(1)} s, ${SESSIONS} WebSocket sessions, a new CONNECT every 100 ms`);
  console.log(`new tunnels opened:  ${figures.newTunnels}`);
  console.log(`new tunnels refused: ${refused} (${fmt(figures.newRefused)})`);
  console.log(`sessions lost:       ${lost} (${fmt(figures.sessionsLost)}) of ${SESSIONS}; reconnects after 4001: ${figures.reconnects}; failed reconnect attempts: ${figures.reconnectFailures}`);
  console.log(`messages echoed:     ${figures.messages}; in flight when told to move (lost on plain tunnels): ${figures.inFlightAtMove}`);
}

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const fn of teardowns.reverse()) await fn();
    process.exit();
  });
