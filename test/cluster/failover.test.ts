/**
 * Node failure, with real processes: the owner of two VMs is killed with SIGKILL. The VM with a
 * replica is promoted there (epoch up, `recovering`), the failover hook runs once on the new
 * owner with the new epoch, the VM becomes `running` when its console answers there, and new
 * tunnels reach it; the VM without a replica is `down` and refused with 503. Also: a leader paused
 * with SIGSTOP past its lease gets no write accepted after it resumes.
 */
import t from 'tap';
import net from 'node:net';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startRedis, redisClient } from '../helpers/redis.js';
import { makeCluster, electedLeader, adminToken, logTime, type ClusterNode } from '../helpers/cluster.js';
import { eventually } from '../helpers/wait.js';
import { fixedPortConsole } from '../helpers/console.js';
import { rawRequest, echoRoundTrip, basic, freePort } from '../helpers/net.js';

const RFB_BANNER = 'RFB 003.008\n';
/** A VNC console greets first (the recovery probe waits for this), then echoes. */
const greetAndEcho = (s: net.Socket): void => {
  s.write(RFB_BANNER);
  s.pipe(s);
};

t.test('owner killed: its VM is promoted on the replica, the hook runs once, tunnels follow', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const hookFile = join(cluster.dir, 'hook.log');
  writeFileSync(hookFile, '');
  const hook = { command: ['/bin/sh', '-c', `echo "$ONEPORT_NODE $1 $2" >> '${hookFile}'`, 'hook'] };
  const nodes = await Promise.all(['f1', 'f2', 'f3'].map((id) => cluster.start(id, { cluster: { failoverHook: hook } })));
  const leader = await electedLeader(nodes);
  const [owner, replica] = nodes.filter((n) => n !== leader) as [ClusterNode, ClusterNode];
  const token = await adminToken(leader);

  const port = await freePort();
  const original = await fixedPortConsole(t, port, greetAndEcho);
  const endpoints = [{ protocol: 'vnc', host: '127.0.0.1', port }];
  let r = await leader.api('PUT', '/api/vms/desk', { token, body: { node: owner.id, replica: replica.id, endpoints, users: ['alice'] } });
  t.equal(r.status, 200, 'VM with a replica');
  r = await leader.api('PUT', '/api/vms/lonely', { token, body: { node: owner.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: await freePort() }], users: ['alice'] } });
  t.equal(r.status, 200, 'VM without a replica');
  r = await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const alice = (await leader.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
  // Every node must know the VM before the owner dies.
  for (const n of nodes) await eventually(async () => ((await n.api<{ node: string }>('GET', '/api/vms/desk', { token })).body.node === owner.id ? true : undefined), 5_000, 'desk everywhere');

  const mark = leader.logs.length;
  const killedAt = Date.now();
  owner.kill('SIGKILL');
  await original.close(); // the host died: its console with it
  const failed = await leader.waitFor((l) => l.event === 'node-failed' && l.node === owner.id, 15_000, { after: mark });
  t.ok(Number(failed.confirmedBy) >= 2 || nodes.length - 1 < 3, `confirmed by ${String(failed.confirmedBy)} node(s)`);
  const moved = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'desk', 5_000, { after: mark });
  t.equal(moved.to, replica.id, 'desk promoted to its replica');
  const promotedMs = logTime(moved) - killedAt;
  t.comment(`owner SIGKILL -> VM promoted: ${promotedMs} ms`);
  const down = await leader.waitFor((l) => l.event === 'vm-failover' && l.vm === 'lonely', 5_000, { after: mark });
  t.equal(down.state, 'down', 'lonely has no replica: down');
  const done = await leader.waitFor((l) => l.event === 'node-failover-done' && l.node === owner.id, 5_000, { after: mark });
  t.match(done, { promoted: 1, down: 1 }, 'the failover is logged with what it did');

  // The hook runs once, on the new owner, with the new epoch; then the console starts there.
  const hookLine = await replica.waitFor((l) => l.event === 'failover-hook' && l.vm === 'desk', 10_000);
  const vm = (await replica.api<{ epoch: number; state: string; node: string }>('GET', '/api/vms/desk', { token })).body;
  t.equal(vm.node, replica.id);
  t.equal(hookLine.epoch, vm.epoch, 'hook given the new epoch');
  t.equal(readFileSync(hookFile, 'utf8'), `${replica.id} desk ${vm.epoch}\n`, 'hook ran once, on the replica, with VM name and epoch');
  // A client arriving while the VM recovers is held (no status line), not refused.
  const holder = nodes.find((n) => n !== owner && n !== replica)!;
  const holdMark = holder.logs.length;
  const held = rawRequest(holder.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', await ticket(leader, alice, 'desk'))}\r\n\r\n`);
  await holder.waitFor((l) => l.event === 'tunnel-hold' && l.vm === 'desk', 10_000, { after: holdMark });

  const restarted = await fixedPortConsole(t, port, greetAndEcho);
  const running = await replica.waitFor((l) => l.event === 'vm-running' && l.vm === 'desk', 10_000);
  t.equal(running.epoch, vm.epoch, 'running at the new epoch once the console answers on the replica');
  const heldRes = await held;
  t.match(heldRes.head, /^HTTP\/1\.1 200/, 'the client held during the recovery is carried through');
  heldRes.socket.destroy();
  const entry = nodes.find((n) => n !== owner && n !== replica)!;
  await eventually(async () => ((await entry.api<{ state: string }>('GET', '/api/vms/desk', { token })).body.state === 'running' ? true : undefined), 5_000, 'running on the entry node');
  const res = await rawRequest(entry.port, `CONNECT desk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', await ticket(entry, alice, 'desk'))}\r\n\r\n`);
  t.match(res.head, /^HTTP\/1\.1 200/, 'a new tunnel is accepted');
  const reply = await echoRoundTrip(res.socket, Buffer.from('after failover'));
  t.equal(Buffer.concat([res.rest, reply]).toString(), `${RFB_BANNER}after failover`, 'and reaches the console on the replica');
  res.socket.destroy();
  t.equal(restarted.accepted(), 3, 'the restarted console saw the recovery probe, the held tunnel and the new one');
  const firstTunnel = Date.now() - killedAt;
  t.comment(`owner SIGKILL -> first tunnel on the replica: ${firstTunnel} ms (includes the simulated VM restart)`);
  t.equal(readFileSync(hookFile, 'utf8').split('\n').filter(Boolean).length, 1, 'the hook still ran only once');

  const lonely = await rawRequest(entry.port, `CONNECT lonely:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('alice', await ticket(entry, alice, 'lonely'))}\r\n\r\n`);
  t.match(lonely.head, /^HTTP\/1\.1 503/, 'a down VM: 503');
  t.match(lonely.body, /ONEPORT_ERR_VM_DOWN/, 'that says the VM is down');
  const state = await eventually(async () => {
    const cl = (await entry.api<{ nodes: Array<{ id: string; state: string }> }>('GET', '/api/cluster', { token })).body;
    const s = cl.nodes.find((n) => n.id === owner.id)?.state;
    return s === 'down' ? s : undefined;
  }, 5_000, 'dead node shown down');
  t.equal(state, 'down', 'the dead node is shown down');
});

async function ticket(node: ClusterNode, token: string, vm: string): Promise<string> {
  const r = await node.api<{ ticket: string }>('POST', `/api/desktops/${vm}/tickets`, { token, body: { protocol: 'vnc' } });
  if (r.status !== 200) throw new Error(`ticket: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.ticket;
}

t.test('leader paused past its lease (SIGSTOP), then resumed: none of its writes is accepted', async (t) => {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const nodes = await Promise.all(['s1', 's2', 's3'].map((id) => cluster.start(id)));
  const leader = await electedLeader(nodes);
  const token = await adminToken(leader);
  const oldEpoch = Number((await leader.waitFor((l) => l.event === 'leader-elected')).epoch);
  const others = nodes.filter((n) => n !== leader);
  const marks = others.map((n) => n.logs.length);

  leader.kill('SIGSTOP');
  t.teardown(() => leader.kill('SIGCONT'));
  const next = await Promise.race(others.map((n, i) => n.waitFor((l) => l.event === 'leader-elected', 10_000, { after: marks[i] }).then((l) => ({ n, l }))));
  const newEpoch = Number(next.l.epoch);
  t.ok(newEpoch > oldEpoch, `${next.n.id} leads with epoch ${newEpoch} > ${oldEpoch}`);
  const mark = leader.logs.length;
  leader.kill('SIGCONT');

  // The resumed ex-leader gets directory writes at once; it must not execute any of them itself.
  const results = await Promise.all(
    Array.from({ length: 5 }, (_, i) => leader.api('PUT', `/api/users/stale${i}`, { token, body: { password: 'stale-password-1' } }).catch((e: Error) => ({ status: 0, body: e.message }))),
  );
  t.ok(results.every((r) => r.status === 200 || r.status === 503), `each write forwarded to the new leader or refused (${results.map((r) => r.status).join(',')})`);
  t.ok(results.some((r) => r.status === 200), 'the resumed node forwards to the new leader');
  await leader.waitFor((l) => l.event === 'leader-stepped-down', 10_000, { after: mark });

  // Count the writes in the change feed by fencing token: none carries the old leader's after the new epoch began.
  const r = redisClient(t, redis.url);
  const entries = (await r.xrange('oneport:{dir}:changes', '-', '+')) as Array<[string, string[]]>;
  const fields = entries.map(([, f]) => Object.fromEntries(Array.from({ length: f.length / 2 }, (_, i) => [f[2 * i], f[2 * i + 1]])) as Record<string, string>);
  const newEpochAt = logTime(next.l);
  const stale = fields.filter((f, i) => Number(entries[i]![0].split('-')[0]) >= newEpochAt && f.w === `${leader.id}|${oldEpoch}`);
  t.equal(stale.length, 0, 'writes accepted from the paused ex-leader after the new epoch: 0');
  const accepted = fields.filter((f) => f.n?.startsWith('stale'));
  t.ok(accepted.every((f) => f.w === `${next.n.id}|${newEpoch}`), 'every write that landed carries the new leader\'s token');
});
