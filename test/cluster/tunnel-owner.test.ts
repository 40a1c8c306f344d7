/**
 * Two bugs of the old tunnel code, on real processes and a real redis-server:
 * - with `cluster.consoleDial: "direct"`, a console on another node that refuses the connection
 *   was read as a silent owner node (a regular expression over the dial's message), so the client
 *   was held for `tunnel.holdMs` and got 503; a refusing console on a live owner is a 502, at once.
 * - a tunnel hopped through the owner node counted the hop's own CONNECT request and its 200 as
 *   tunnel bytes in the entry node's log line and metrics.
 */
import t from 'tap';
import { randomBytes, createHash } from 'node:crypto';
import { once } from 'node:events';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { startBackend, rawRequest, basic, closedPort } from '../helpers/net.js';
import { streamQueue } from '../helpers/bytes.js';
import { vncAuthConsole } from '../helpers/console.js';

const HOLD_MS = 20_000;

t.test('tunnels to a VM on another node', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url, { tunnel: { holdMs: HOLD_MS } });
  const owner = await cluster.start('own');
  const viaOwner = await cluster.start('via');
  const direct = await cluster.start('dir', { cluster: { consoleDial: 'direct' } });
  const nodes = [owner, viaOwner, direct];
  const leader = await electedLeader(nodes);
  const token = await adminToken(leader);
  const echo = await startBackend(t);
  const refusing = await closedPort();
  const put = async (name: string, port: number): Promise<void> => {
    const r = await leader.api('PUT', `/api/vms/${name}`, { token, body: { node: owner.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['alice'] } });
    t.equal(r.status, 200, `VM ${name} on ${owner.id}`);
  };
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  await put('echo', echo.port);
  await put('gone', refusing);
  for (const n of nodes) {
    await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/gone', { token })).body.node === owner.id ? true : undefined), 5_000, `VMs on ${n.id}`);
    // Every node must see the owner up, or it would hold the client for the failover instead.
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token });
      return view.body.nodes.length === 3 && view.body.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, 10_000, `all up on ${n.id}`);
  }
  const locked = await vncAuthConsole(t, 'owner-only');
  const r0 = await leader.api('PUT', '/api/vms/locked', { token, body: { node: owner.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: locked.port, password: 'owner-only' }], users: ['alice'] } });
  t.equal(r0.status, 200, 'VM locked (a console password) on the owner');
  for (const n of nodes) await eventually(async () => ((await n.api<{ node?: string }>('GET', '/api/vms/locked', { token })).body.node === owner.id ? true : undefined), 5_000, `VM locked on ${n.id}`);
  const alice = (await direct.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  const ticketFor = async (node: ClusterNode, vm: string): Promise<string> =>
    (await node.api<{ ticket: string }>('POST', `/api/desktops/${vm}/tickets`, { token: alice, body: { protocol: 'vnc' } })).body.ticket;
  const ca = cluster.ca.cert;

  t.test('consoleDial "direct": a console that refuses on a live owner is a 502 at once, not a hold', async (t) => {
    const ticket = await ticketFor(direct, 'gone');
    const started = Date.now();
    const r = await rawRequest(direct.port, `CONNECT gone:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca, timeoutMs: HOLD_MS + 5000 });
    const ms = Date.now() - started;
    t.equal(r.status, 502, 'the console did not answer: 502');
    t.match(r.body, 'ONEPORT_ERR_CONSOLE_UNREACHABLE');
    t.ok(ms < HOLD_MS / 4, `answered in ${ms} ms, not after the hold time (${HOLD_MS} ms)`);
    t.notOk(direct.logs.some((l) => l.event === 'tunnel-hold' && l.vm === 'gone'), 'the client was never held');
  });

  t.test('a logout on one node ends the tunnels its session opened through another node', async (t) => {
    const token = (await direct.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
    const ticket = (await direct.api<{ ticket: string }>('POST', '/api/desktops/echo/tickets', { token, body: { protocol: 'vnc' } })).body.ticket;
    const r = await rawRequest(viaOwner.port, `CONNECT echo:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca });
    t.equal(r.status, 200, 'a tunnel entering at another node than the one that logged in');
    r.socket.on('error', () => {});
    const closed = once(r.socket, 'close');
    r.socket.resume();
    const mark = viaOwner.logs.length;
    const ownerMark = owner.logs.length;
    t.equal((await direct.api('POST', '/api/logout', { token })).status, 200, 'logged out on the first node');
    await closed;
    const line = await viaOwner.waitFor((l) => l.event === 'tunnels-revoked' && l.reason === 'logged-out', 10_000, { after: mark });
    t.equal(line.tunnels, 1, 'the other node ended it');
    // Both sides' lines for this tunnel are in before the next test looks for its own.
    await viaOwner.waitFor((l) => l.event === 'tunnel' && l.vm === 'echo', 10_000, { after: mark });
    await owner.waitFor((l) => l.event === 'tunnel' && l.vm === 'echo' && l.transport === 'hop', 10_000, { after: ownerMark });
  });

  t.test('a hopped tunnel counts exactly the bytes that crossed it, on the entry node and on the owner', async (t) => {
    const ticket = await ticketFor(viaOwner, 'echo');
    const entryMark = viaOwner.logs.length;
    const ownerMark = owner.logs.length;
    const r = await rawRequest(viaOwner.port, `CONNECT echo:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', ticket)}\r\n\r\n`, { ca });
    t.equal(r.status, 200);
    const size = 3 * 1024 * 1024;
    const payload = randomBytes(size);
    const back: Buffer[] = [];
    let got = 0;
    const done = new Promise<void>((resolve) => {
      r.socket.on('data', (d: Buffer) => {
        back.push(d);
        got += d.length;
        if (got >= size) resolve();
      });
    });
    r.socket.resume();
    r.socket.write(payload);
    await done;
    t.equal(createHash('sha256').update(Buffer.concat(back)).digest('hex'), createHash('sha256').update(payload).digest('hex'), 'the echo came back whole');
    r.socket.end();
    const entryLine = await viaOwner.waitFor((l) => l.event === 'tunnel' && l.vm === 'echo', 10_000, { after: entryMark });
    const ownerLine = await owner.waitFor((l) => l.event === 'tunnel' && l.vm === 'echo' && l.transport === 'hop', 10_000, { after: ownerMark });
    t.equal(entryLine.consoleNode, owner.id, 'the tunnel went through the owner');
    t.same({ toConsole: entryLine.bytesToConsole, toClient: entryLine.bytesToClient }, { toConsole: size, toClient: size }, 'entry node: exactly the bytes that crossed');
    t.same({ toConsole: ownerLine.bytesToConsole, toClient: ownerLine.bytesToClient }, { toConsole: size, toClient: size }, 'owner node: the same');
    const metrics = await viaOwner.api<string>('GET', '/metrics');
    const counted = (dir: string): number => Number(new RegExp(`^oneport_tunnel_bytes_total\\{direction="${dir}"\\} (\\d+)`, 'm').exec(metrics.body)?.[1] ?? NaN);
    t.same({ toConsole: counted('to_console'), toClient: counted('to_client') }, { toConsole: size, toClient: size }, 'and the entry node\'s metrics count the same');
  });

  t.test('a console password through the hop: the entry node logs in once, the owner passes bytes', async (t) => {
    for (const entry of [viaOwner, direct]) {
      const before = locked.accepted();
      const r = await rawRequest(entry.port, `CONNECT locked:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', await ticketFor(entry, 'locked'))}\r\n\r\n`, { ca });
      t.equal(r.status, 200, `${entry.id}: 200 once the console accepted the stored password`);
      r.socket.on('error', () => {});
      const q = streamQueue(r.socket);
      if (r.rest.length > 0) q.push(r.rest);
      r.socket.resume();
      t.equal((await q.read(12, 10_000, 'banner')).toString('latin1'), 'RFB 003.008\n');
      r.socket.write('RFB 003.008\n');
      t.same(await q.read(2, 10_000, 'offer'), Buffer.from([1, 1]), `${entry.id}: the client is offered None`);
      r.socket.write(Buffer.from([1, 1]));
      t.same(await q.read(4, 10_000, 'result'), Buffer.alloc(4), 'SecurityResult OK');
      t.equal((await q.read(28, 10_000, 'ServerInit')).subarray(24).toString(), 'fake', 'ServerInit from the console');
      t.equal(locked.accepted() - before, 1, `${entry.id}: the console saw exactly one login`);
      r.socket.destroy();
    }
    const handshakes = async (n: ClusterNode): Promise<number> => Number(/^oneport_console_handshakes_total\{protocol="vnc",result="ok"\} (\d+)/m.exec((await n.api<string>('GET', '/metrics')).body)?.[1] ?? 0);
    t.same([await handshakes(viaOwner), await handshakes(direct), await handshakes(owner)], [1, 1, 0], 'done by the entry nodes; the owner (a hop) did none');
    t.equal(locked.refused(), 0);
  });
});
