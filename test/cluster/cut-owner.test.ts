/**
 * A VM owner cut off from part of the cluster while its process and its console are fine (the
 * cuts bench/faults.ts measures; reliability issue, point 2). The cut is a loopback fault proxy
 * that stops forwarding (no FIN, no RST: what a partition looks like to both ends).
 *
 * - Cut from Redis only: its heartbeat stops, so the other nodes see it suspect, but its port
 *   answers their probes, so it is never failed over and its VMs have no other owner. Tunnels
 *   entering healthy nodes for its VMs were held for the whole cut (the entry nodes did not hop to
 *   a suspect owner; cluster/reach.ts); they go through the hop, which needs nothing from Redis on
 *   the owner's side.
 * - Cut from its peers only (they reach its advertised address through the proxy): it still
 *   heartbeats, so it is not failed over (correct) but a live tunnel through the hop froze for the
 *   whole cut, and a new one waited for the hop's own 5 s dial deadline whatever the hold. Now the
 *   live tunnel is ended once its hop brought nothing and the owner's port did not answer a probe
 *   (cluster/hop-watch.ts), and a new tunnel gets 503 ONEPORT_ERR_VM_RECOVERING at the hold's end.
 *
 * Real gateway processes and a real redis-server; the console is an echo server with a banner.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { startRedis, startFaultProxy, type FaultProxy } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { fixedPortConsole } from '../helpers/console.js';
import { basic, closedWithin, errorCode, freePort, rawRequest } from '../helpers/net.js';

const BANNER = 'RFB 003.008\n';

interface Cut {
  entry: ClusterNode;
  owner: ClusterNode;
  proxy: FaultProxy;
  token: string;
}

/** Two nodes, then the owner (so that it starts as a follower), its Redis or its port behind `proxy`. */
async function cutCluster(t: Test, kind: 'redis' | 'peers', base: Record<string, unknown> = {}): Promise<Cut> {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, base);
  const a = await cluster.start('c1');
  const b = await cluster.start('c2');
  const entry = await electedLeader([a, b]);
  let proxy: FaultProxy;
  let owner: ClusterNode;
  if (kind === 'redis') {
    proxy = await startFaultProxy(t, Number(new URL(redis.url).port));
    owner = await cluster.start('c3', { cluster: { redis: proxy.url } });
  } else {
    const port = await freePort();
    proxy = await startFaultProxy(t, port);
    owner = await cluster.start('c3', { listen: `127.0.0.1:${port}`, cluster: { advertise: `127.0.0.1:${proxy.port}` } });
  }
  const token = await adminToken(entry);
  const consolePort = await freePort();
  await fixedPortConsole(t, consolePort, (s: net.Socket) => {
    s.write(BANNER);
    s.pipe(s);
  });
  const replica = entry === a ? b : a;
  const r = await entry.api('PUT', '/api/vms/desk', { token, body: { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: consolePort }], users: ['root'] } });
  t.equal(r.status, 200, 'desk on the owner to be cut');
  for (const n of [a, b, owner]) await eventually(async () => ((await n.api<{ state: string }>('GET', '/api/vms/desk', { token })).body.state === 'running' ? true : undefined), 10_000, `desk running on ${n.id}`);
  await eventually(async () => {
    const st = (await entry.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token })).body;
    return st.nodes.filter((n) => n.state === 'up').length === 3 ? true : undefined;
  }, 10_000, 'three nodes up');
  return { entry, owner, proxy, token };
}

/** A CONNECT tunnel to desk through `node` with a fresh ticket; the response as it came. */
async function tunnel(c: Cut, node: ClusterNode, timeoutMs: number): Promise<Awaited<ReturnType<typeof rawRequest>>> {
  const ticket = (await c.entry.api<{ ticket: string }>('POST', '/api/desktops/desk/tickets', { token: c.token, body: { protocol: 'vnc' } })).body.ticket;
  return rawRequest(node.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('root', ticket)}\r\n\r\n`, { timeoutMs });
}

/** The banner, then an echo round trip: the tunnel reaches the console. */
async function reachesConsole(t: Test, res: Awaited<ReturnType<typeof rawRequest>>, what: string): Promise<void> {
  const s = res.socket;
  let got = res.rest;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: got ${JSON.stringify(got.toString())}`)), 5_000);
    const onData = (d: Buffer): void => {
      got = Buffer.concat([got, d]);
      if (!got.toString().endsWith('ping')) return;
      clearTimeout(timer);
      s.off('data', onData);
      resolve();
    };
    s.on('data', onData);
    s.resume();
    s.write('ping');
  });
  t.equal(got.toString(), `${BANNER}ping`, what);
}

async function nodeState(c: Cut, id: string): Promise<string | undefined> {
  const st = (await c.entry.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token: c.token })).body;
  return st.nodes.find((n) => n.id === id)?.state;
}

t.test('owner cut from Redis only: tunnels entering a healthy node reach its VM through the hop', async (t) => {
  const c = await cutCluster(t, 'redis');
  c.proxy.hang();
  t.teardown(() => c.proxy.heal());
  // Its heartbeat expires: the entry node sees it suspect (and it stays: its port answers probes).
  await eventually(async () => ((await nodeState(c, c.owner.id)) === 'suspect' ? true : undefined), 10_000, 'the owner suspect');
  const started = Date.now();
  const res = await tunnel(c, c.entry, 10_000);
  t.equal(res.status, 200, 'the tunnel opens while the owner cannot reach Redis');
  await reachesConsole(t, res, 'and reaches the console on the cut owner');
  const ms = Date.now() - started;
  t.ok(ms < 3_000, `first byte after ${ms} ms (it was held for the whole cut; hold 60 s)`);
  res.socket.destroy();
  const vm = await c.entry.api<{ node: string }>('GET', '/api/vms/desk', { token: c.token });
  t.equal(vm.body.node, c.owner.id, 'the VM stays on its owner: nobody found its port silent');
  t.equal(await nodeState(c, c.owner.id), 'suspect', 'still cut (the tunnel was not opened after a heal)');
});

t.test('owner cut from its peers only: a live tunnel through the hop ends, a new one gets 503 at the hold end', async (t) => {
  const holdMs = 2_500;
  const c = await cutCluster(t, 'peers', { tunnel: { holdMs } });
  const live = await tunnel(c, c.entry, 10_000);
  t.equal(live.status, 200);
  await reachesConsole(t, live, 'a live tunnel through the hop before the cut');

  const mark = c.entry.logs.length;
  const cutAt = Date.now();
  c.proxy.hang();
  t.teardown(() => c.proxy.heal());
  live.socket.write('into the cut');
  // Silent for nodeTimeoutMs (1.5 s), found at the next look (0.25 s), probe deadline 1 s: 2.75 s.
  const closed = await closedWithin(live.socket, 10_000);
  const liveMs = Date.now() - cutAt;
  t.ok(liveMs <= 4_500, `the live tunnel is ended ${liveMs} ms after the cut (bound 2.75 s + slack for a loaded machine)`);
  const said = await c.entry.waitFor((l) => l.event === 'hop-silent', 5_000, { after: mark });
  t.equal(said.node, c.owner.id, 'the entry node says which node went silent');

  const asked = Date.now();
  const fresh = await tunnel(c, c.entry, 15_000);
  const freshMs = Date.now() - asked;
  t.equal(fresh.status, 503, 'a new tunnel through the cut hop: 503');
  t.equal(errorCode(fresh.body), 'ONEPORT_ERR_VM_RECOVERING', 'VM recovering (the hold ended)');
  t.match(fresh.head, /retry-after:/i, 'with Retry-After');
  t.ok(freshMs <= holdMs + 1_500, `answered after ${freshMs} ms (hold ${holdMs} ms; the hop's own dial deadline is 5 s)`);
  fresh.socket.destroy();
  t.equal(closed.data.includes(Buffer.from('into the cut')), false, 'nothing came back through the cut');

  const vm = await c.entry.api<{ node: string }>('GET', '/api/vms/desk', { token: c.token });
  t.equal(vm.body.node, c.owner.id, 'no failover: the owner still heartbeats');
  c.proxy.heal();
  const after = await eventually(async () => {
    const r = await tunnel(c, c.entry, 10_000).catch(() => undefined);
    if (r?.status === 200) return r;
    r?.socket.destroy();
    return undefined;
  }, 15_000, 'a tunnel once the cut heals');
  await reachesConsole(t, after, 'after the heal the hop works again');
  after.socket.destroy();
});
