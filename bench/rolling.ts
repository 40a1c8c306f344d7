/**
 * Rolling upgrade under load (issue 15 point 1): a 3-node cluster on a real redis-server; every
 * node in turn is drained with `--move-vms` (`POST /api/nodes/<id>/drain`, asked at another node),
 * waited for until it exited, and started again; meanwhile `--tunnels` (100) tunnels stay busy,
 * entering through a "balancer" that sends each connection to a node whose /readyz said 200 at its
 * last check (checked every 500 ms; the nodes' shutdown.unreadyMs is twice that):
 * - 40% `oneport.v1` sessions (web/oneport-channel.js), each sending 512 random bytes every
 *   `--interval-ms` and checking the echo byte for byte: told 4001 `{"resume":true}` by a drained
 *   entry node, the channel resumes through the balancer (the session is held at the VM's owner);
 *   told 4001 without it (the VM itself moved: its console restarted, DECISIONS 2026-12-03), the
 *   client opens a fresh session with a new ticket. Bytes echoed wrong or never echoed on a session
 *   that was kept are lost bytes (must be 0); those in flight when a session ended because its VM
 *   moved are counted apart (by design, the console they went to is gone);
 * - 30% plain WebSocket tunnels (`binary`) with numbered messages: told 4001, a client reconnects
 *   at the node the close names, with a new ticket;
 * - 30% CONNECT tunnels with numbered messages: closed by a drain, a client reconnects through the
 *   balancer with a new ticket;
 * and a new tunnel is opened every 100 ms (CONNECT and oneport.v1 in turn, each checked to its
 * 200 or hello within 15 s, a client's patience: slower counts as refused; setup times printed). A session is lost when it ends any other way, or its reconnect fails 5
 * times in a row.
 *
 * Printed, and written to bench/rolling-results.json (`npm run reliability` puts it in
 * bench/RELIABILITY.md): new tunnels opened / refused (must be 0), sessions lost beyond a
 * reconnect (must be 0), bytes lost on oneport.v1 sessions (must be 0), resumes, reconnects, and
 * the load average.
 *
 *   npm run bench:rolling [-- --tunnels 100 --interval-ms 200]
 */
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type tls from 'node:tls';
import type net from 'node:net';
import { WebSocket } from 'ws';
import { OneportChannel } from '../web/oneport-channel.js';
import { startRedis } from '../test/helpers/redis.js';
import { adminToken, electedLeader, makeCluster, type ClusterNode } from '../test/helpers/cluster.js';
import { clearConnect } from '../test/helpers/scenario.js';
import { startBackend, rawRequest } from '../test/helpers/net.js';
import { deadline, eventually } from '../test/helpers/wait.js';

const { values: args } = parseArgs({ options: { tunnels: { type: 'string', default: '100' }, 'interval-ms': { type: 'string', default: '200' } } });
const TUNNELS = Number(args.tunnels);
const INTERVAL_MS = Number(args['interval-ms']);
const V1 = Math.round(TUNNELS * 0.4);
const PLAIN = Math.round(TUNNELS * 0.3);
const STREAMS = TUNNELS - V1 - PLAIN;
/** Twice the balancer's check interval below: it has seen the node unready before clients are sent away. */
const UNREADY_MS = 1000;
const USERS = 10;
/** How long a new tunnel may take (ticket, then the 200 or the hello) before it counts as refused: a client's patience. */
const NEW_TUNNEL_MS = 15_000;
const V1_BYTES = 512;
/** Reconnect attempts in a row after which a session counts as lost. */
const MAX_TRIES = 5;
const RESULTS = fileURLToPath(new URL('./rolling-results.json', import.meta.url));
/** The nodes' warnings, errors and refusals of the last run (not committed). */
const LOGS = join(os.tmpdir(), 'oneport-rolling-notable.jsonl');
const teardowns: Array<() => unknown> = [];
const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function percentiles(xs: number[]): { p50: number; p99: number; max: number } {
  const sorted = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? 0 };
}

async function main(): Promise<void> {
  const loadBefore = os.loadavg();
  const echo = await startBackend(t);
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, {
    shutdown: { drainMs: 15_000, unreadyMs: UNREADY_MS },
    log: { level: 'info' },
    // Every client here is 127.0.0.1.
    limits: { maxConnectionsPerAddress: 5000 },
  });
  const ids = ['r1', 'r2', 'r3'];
  const nodes = new Map<string, ClusterNode>();
  /** Every process started, restarted ones included: their warnings and refusals go to a file at the end. */
  const everyProcess: ClusterNode[] = [];
  for (const id of ids) nodes.set(id, await cluster.start(id));
  everyProcess.push(...nodes.values());
  const leader = await electedLeader([...nodes.values()]);
  const token = await adminToken(leader);
  const users = Array.from({ length: USERS }, (_, i) => `u${i}`);
  for (const u of users) await leader.api('PUT', `/api/users/${u}`, { token, body: { password: 'user-password-1' } });
  for (const [i, id] of ids.entries()) {
    const r = await leader.api('PUT', `/api/vms/d${i}`, { token, body: { node: id, replica: ids[(i + 1) % 3], endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], users } });
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
      await sleep(500);
    }
  })();
  let rr = 0;
  const pick = (): ClusterNode => {
    const h = up().filter((n) => healthy.has(n.id));
    const list = h.length > 0 ? h : up();
    return list[rr++ % list.length]!;
  };
  // One login per user: the session token is good on every node (shared keys), restarted ones included.
  const logins = new Map<string, string>();
  for (const u of users) logins.set(u, (await leader.api<{ token: string }>('POST', '/api/login', { body: { user: u, password: 'user-password-1' } })).body.token);
  const ticket = async (at: ClusterNode, user: string, vm: string): Promise<{ ticket: string; resume: string }> => {
    const r = await at.api<{ ticket: string; resume: string }>('POST', `/api/desktops/${vm}/tickets`, { token: logins.get(user)!, body: { protocol: 'vnc' } });
    if (r.status !== 200) throw new Error(`ticket: ${r.status}`);
    return r.body;
  };

  const f = {
    newTunnels: 0,
    newRefused: new Map<string, number>(),
    sessionsLost: new Map<string, number>(),
    reconnects: 0,
    reconnectFailures: 0,
    v1: { resumes: 0, freshAfterMove: 0, bytesEchoed: 0, bytesWrong: 0, bytesNeverEchoed: 0, inFlightAtMove: 0, sent: 0 },
    plain: { messages: 0, inFlightAtMove: 0 },
    streams: { messages: 0, inFlightAtClose: 0, reconnects: 0 },
  };
  const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);
  /** What each client is doing, to name the ones that do not finish. */
  const phase = new Map<string, string>();
  const lost = (kind: string, why: string): void => bump(f.sessionsLost, `${kind} ${why}`);

  /** Retry `open` until it works; a session is lost after MAX_TRIES failures in a row. */
  const withRetries = async <T>(kind: string, open: (at: ClusterNode) => Promise<T>, first?: ClusterNode): Promise<T | undefined> => {
    let at = first ?? pick();
    for (let tries = 0; running; tries++) {
      try {
        return await open(at);
      } catch (err) {
        f.reconnectFailures++;
        if (tries + 1 >= MAX_TRIES) {
          lost(kind, `reconnect failed ${MAX_TRIES}x: ${(err as Error).message.slice(0, 60)}`);
          tries = -1;
        }
        at = pick();
        await sleep(200);
      }
    }
    return undefined;
  };

  /** A oneport.v1 session: random bytes, echo checked byte for byte; resumes by itself, fresh after a VM move. */
  const v1Session = async (i: number): Promise<void> => {
    const vm = `d${i % 3}`;
    const user = users[i % USERS]!;
    const me = `v1-${i}`;
    while (running) {
      phase.set(me, 'opening');
      const ch = await withRetries('oneport.v1', async (at) => {
        const tk = await ticket(at, user, vm);
        const channel = new OneportChannel(`wss://127.0.0.1:${at.port}/tunnel/${vm}/vnc?ticket=${tk.ticket}`, {
          resume: tk.resume,
          WebSocket: WebSocket as never,
          wsOptions: { ca: cluster.ca.cert },
          // The balancer, whichever node a drained one names.
          route: () => `wss://127.0.0.1:${pick().port}/tunnel/${vm}/vnc`,
          onStatus: (s) => s.state === 'resumed' && f.v1.resumes++,
        });
        await new Promise<void>((resolve, reject) => {
          channel.onopen = () => resolve();
          channel.onclose = (ev) => reject(new Error(`closed ${ev.code} before it opened`));
        });
        return channel;
      });
      if (!ch) break;
      let expected = Buffer.alloc(0);
      ch.onmessage = (ev) => {
        const got = Buffer.from(ev.data);
        const want = expected.subarray(0, got.length);
        expected = expected.subarray(got.length);
        if (want.equals(got)) f.v1.bytesEchoed += got.length;
        else f.v1.bytesWrong += got.length;
      };
      const closed = new Promise<{ code: number; reason: string }>((r) => (ch.onclose = (ev) => r(ev)));
      let ended = false;
      void closed.then(() => (ended = true));
      phase.set(me, 'sending');
      while (running && !ended) {
        const chunk = randomBytes(V1_BYTES);
        expected = Buffer.concat([expected, chunk]);
        f.v1.sent += chunk.length;
        ch.send(chunk);
        await Promise.race([sleep(INTERVAL_MS), closed]);
      }
      if (!running && !ended) {
        // The end: what is still owed must come back.
        phase.set(me, 'waiting for its echo');
        const until = Date.now() + 15_000;
        while (expected.length > 0 && Date.now() < until && !ended) await sleep(100);
        f.v1.bytesNeverEchoed += expected.length;
        ch.close(1000);
        phase.delete(me);
        return;
      }
      phase.set(me, 'closed');
      const end = await closed;
      if (end.code === 4001) {
        // The VM moved: its console restarted; a fresh session with a new ticket (DECISIONS 2026-12-03).
        f.v1.freshAfterMove++;
        f.v1.inFlightAtMove += expected.length;
        f.reconnects++;
      } else {
        f.v1.bytesNeverEchoed += expected.length;
        lost('oneport.v1', `closed ${end.code}`);
      }
    }
    phase.delete(me);
  };

  /** A plain WebSocket tunnel: numbered messages; reconnects on 4001 where the close says. */
  const plainSession = async (i: number): Promise<void> => {
    const vm = `d${i % 3}`;
    const user = users[i % USERS]!;
    const me = `plain-${i}`;
    let next: ClusterNode | undefined;
    let seq = 0;
    while (running) {
      phase.set(me, 'opening');
      const ws = await withRetries('websocket', async (at) => {
        const s = new WebSocket(`wss://127.0.0.1:${at.port}/tunnel/${vm}/vnc?ticket=${(await ticket(at, user, vm)).ticket}`, ['binary'], { ca: cluster.ca.cert });
        s.on('error', () => {});
        await new Promise<void>((resolve, reject) => {
          s.once('open', () => resolve());
          s.once('close', (code: number) => reject(new Error(`closed ${code} before it opened`)));
        });
        return s;
      }, next);
      if (!ws) break;
      phase.set(me, 'sending');
      const outcome = await new Promise<{ code: number; reason: string }>((resolve) => {
        const pending = new Set<number>();
        const timer = setInterval(() => {
          if (!running) return ws.close(1000);
          const n = seq++;
          pending.add(n);
          ws.send(Buffer.from(`${n};`));
        }, INTERVAL_MS);
        ws.on('message', (d: Buffer) => {
          for (const part of d.toString().split(';')) if (part && pending.delete(Number(part))) f.plain.messages++;
        });
        ws.on('close', (code: number, reason: Buffer) => {
          clearInterval(timer);
          if (code === 4001) f.plain.inFlightAtMove += pending.size;
          resolve({ code, reason: reason.toString() });
        });
      });
      if (!running) break;
      if (outcome.code === 4001) {
        f.reconnects++;
        const named = (JSON.parse(outcome.reason) as { node?: string }).node;
        const target = named !== undefined ? nodes.get(named) : undefined;
        next = target && up().includes(target) && healthy.has(target.id) ? target : undefined;
        continue;
      }
      lost('websocket', `closed ${outcome.code}`);
      next = undefined;
    }
    phase.delete(me);
  };

  /** A CONNECT tunnel: numbered messages; a drain closes it, the client reconnects through the balancer. */
  const streamSession = async (i: number): Promise<void> => {
    const vm = `d${i % 3}`;
    const user = users[i % USERS]!;
    const me = `connect-${i}`;
    let seq = 0;
    while (running) {
      phase.set(me, 'opening');
      const socket = await withRetries('connect', async (at) => {
        const r = await rawRequest(at.port, clearConnect((await ticket(at, user, vm)).ticket, vm), { ca: cluster.ca.cert, timeoutMs: 10_000 });
        if (r.status !== 200) {
          r.socket.destroy();
          throw new Error(`status ${r.status}`);
        }
        return r.socket;
      });
      if (!socket) break;
      phase.set(me, 'sending');
      await new Promise<void>((resolve) => {
        const pending = new Set<number>();
        let buf = '';
        const timer = setInterval(() => {
          if (!running) return void socket.end();
          const n = seq++;
          pending.add(n);
          socket.write(`${n};`);
        }, INTERVAL_MS);
        (socket as net.Socket | tls.TLSSocket).on('data', (d: Buffer) => {
          buf += d.toString();
          const parts = buf.split(';');
          buf = parts.pop() ?? '';
          for (const p of parts) if (pending.delete(Number(p))) f.streams.messages++;
        });
        // rawRequest leaves the socket paused after the response head.
        socket.resume();
        socket.on('close', () => {
          clearInterval(timer);
          if (running) f.streams.inFlightAtClose += pending.size;
          resolve();
        });
      });
      if (!running) break;
      f.streams.reconnects++;
      f.reconnects++;
    }
    phase.delete(me);
  };

  const clients = [
    ...Array.from({ length: V1 }, (_, i) => v1Session(i)),
    ...Array.from({ length: PLAIN }, (_, i) => plainSession(i)),
    ...Array.from({ length: STREAMS }, (_, i) => streamSession(i)),
  ];

  /** Setup times of the new tunnels (ticket included), ms. */
  const setups: number[] = [];
  /** New tunnels all along: CONNECT and oneport.v1 in turn, each to its first byte or hello. */
  const opener = (async () => {
    let i = 0;
    while (running) {
      const at = pick();
      const vm = `d${i % 3}`;
      const user = users[i % USERS]!;
      const kind = i++ % 2 === 0 ? 'connect' : 'oneport.v1';
      const t0 = Date.now();
      try {
        const tk = await ticket(at, user, vm);
        if (kind === 'connect') {
          const r = await rawRequest(at.port, clearConnect(tk.ticket, vm), { ca: cluster.ca.cert, timeoutMs: NEW_TUNNEL_MS });
          r.socket.destroy();
          if (r.status !== 200) throw new Error(`${r.status} ${/ONEPORT_ERR_\w+/.exec(r.body)?.[0] ?? ''} at ${at.id}${healthy.has(at.id) ? '' : ' (unready)'}`);
        } else {
          const ws = new WebSocket(`wss://127.0.0.1:${at.port}/tunnel/${vm}/vnc?ticket=${tk.ticket}`, ['oneport.v1'], { ca: cluster.ca.cert });
          ws.on('error', () => {});
          await Promise.race([
            new Promise<void>((resolve, reject) => {
              ws.once('message', () => resolve());
              ws.once('close', (code: number, reason: Buffer) => reject(new Error(`close ${code} ${reason.toString().slice(0, 40)} at ${at.id}${healthy.has(at.id) ? '' : ' (unready)'}${up().includes(at) ? '' : ' (exited)'}`)));
            }),
            deadline(NEW_TUNNEL_MS, 'hello'),
          ]).finally(() => ws.close(1000));
        }
        f.newTunnels++;
        setups.push(Date.now() - t0);
      } catch (err) {
        bump(f.newRefused, `${kind}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message.slice(0, 60)}`);
      }
      await sleep(100);
    }
  })();

  await sleep(5000);
  const started = Date.now();
  const loads: number[] = [];
  const steps: Array<{ node: string; backUpMs: number }> = [];
  for (const id of ids) {
    const node = nodes.get(id)!;
    const asker = up().find((n) => n.id !== id)!;
    const admin = await asker.admin();
    await admin.drainNode(id, true);
    await admin.close();
    await Promise.race([node.exited(), deadline(30_000, `${id} exiting`)]);
    loads.push(os.loadavg()[0]!);
    const t0 = Date.now();
    const again = await cluster.start(id);
    nodes.set(id, again);
    everyProcess.push(again);
    await eventually(async () => {
      const v = await again.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token });
      return v.body.nodes.filter((x) => x.state === 'up').length === 3 ? true : undefined;
    }, 30_000, `${id} back up`);
    steps.push({ node: id, backUpMs: Date.now() - t0 });
    process.stderr.write(`${id}: drained, restarted, up again after ${Date.now() - t0} ms\n`);
    await sleep(3000);
  }
  const elapsed = Date.now() - started;
  running = false;
  // Every client finishes within a minute (its last echo, a close handshake); name any that does not.
  const finished = Promise.all([opener, checker, ...clients]);
  const watchdog = setInterval(() => process.stderr.write(`still finishing: ${[...phase].map(([k, v]) => `${k} ${v}`).join(', ')}\n`), 10_000);
  const done = await Promise.race([finished.then(() => true), sleep(60_000).then(() => false)]);
  clearInterval(watchdog);
  for (const [k, v] of phase) lost(k.replace(/-\d+$/, ''), `did not finish (${v})`);
  const loadAfter = os.loadavg();

  const fmt = (m: Map<string, number>): string => [...m].map(([k, v]) => `${k}: ${v}`).join(', ') || 'none';
  const refused = [...f.newRefused.values()].reduce((a, b) => a + b, 0);
  const sessionsLost = [...f.sessionsLost.values()].reduce((a, b) => a + b, 0);
  const v1BytesLost = f.v1.bytesWrong + f.v1.bytesNeverEchoed;
  const results = {
    date: new Date().toISOString(),
    machine: `${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores`,
    loadAverage: { before: loadBefore, atDrains: loads, after: loadAfter },
    options: { tunnels: TUNNELS, oneportV1: V1, plainWebSocket: PLAIN, connect: STREAMS, intervalMs: INTERVAL_MS, unreadyMs: UNREADY_MS, moveVms: true },
    elapsedMs: elapsed,
    steps,
    allClientsFinished: done,
    newTunnels: { opened: f.newTunnels, refused, refusedBy: Object.fromEntries(f.newRefused), setupMs: percentiles(setups), patienceMs: NEW_TUNNEL_MS },
    sessionsLost: { total: sessionsLost, by: Object.fromEntries(f.sessionsLost) },
    reconnects: f.reconnects,
    reconnectAttemptsFailed: f.reconnectFailures,
    oneportV1: { ...f.v1, bytesLost: v1BytesLost },
    plainWebSocket: f.plain,
    connect: f.streams,
  };
  writeFileSync(RESULTS, `${JSON.stringify(results, null, 2)}\n`);
  const notable = everyProcess.flatMap((n) => n.logs.filter((l) => Number(l.level) >= 40 || /refused|failed/.test(String(l.event))).map((l) => JSON.stringify({ node: n.id, port: n.port, ...l })));
  writeFileSync(LOGS, `${notable.join('\n')}\n`);
  console.log(`rolling drain (--move-vms) + restart of 3 nodes in ${(elapsed / 1000).toFixed(1)} s; ${TUNNELS} busy tunnels (${V1} oneport.v1, ${PLAIN} plain WebSocket, ${STREAMS} CONNECT), one message each every ${INTERVAL_MS} ms; a new tunnel every 100 ms`);
  console.log(`load average: before ${loadBefore.map((x) => x.toFixed(1)).join(' ')}; at each drain ${loads.map((x) => x.toFixed(1)).join(', ')}; after ${loadAfter.map((x) => x.toFixed(1)).join(' ')}`);
  console.log(`new tunnels opened:          ${f.newTunnels}; setup (ticket + 200 or hello) ${JSON.stringify(percentiles(setups))} ms`);
  console.log(`new tunnels refused:         ${refused} (${fmt(f.newRefused)})`);
  console.log(`sessions lost (beyond a reconnect): ${sessionsLost} (${fmt(f.sessionsLost)}); reconnects ${f.reconnects}; failed reconnect attempts ${f.reconnectFailures}`);
  console.log(`oneport.v1 bytes lost:       ${v1BytesLost} (echoed wrong ${f.v1.bytesWrong}, never echoed ${f.v1.bytesNeverEchoed}) of ${f.v1.sent} sent, ${f.v1.bytesEchoed} echoed intact; resumes ${f.v1.resumes}`);
  console.log(`oneport.v1 sessions ended because their VM moved (console restarted, by design): ${f.v1.freshAfterMove}, ${f.v1.inFlightAtMove} bytes in flight then`);
  console.log(`plain WebSocket: ${f.plain.messages} messages echoed, ${f.plain.inFlightAtMove} in flight when told to move; CONNECT: ${f.streams.messages} echoed, ${f.streams.reconnects} reconnects, ${f.streams.inFlightAtClose} in flight at a close`);
  console.log(`results: ${RESULTS}; the nodes' warnings and refusals: ${LOGS}`);
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
