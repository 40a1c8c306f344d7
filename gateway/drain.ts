/**
 * Drain: a node leaving on purpose (SIGTERM, `oneport node drain <id>`) hands its clients over
 * instead of dropping them (DECISIONS 2026-12-03, "Graceful stop").
 *
 * 1. It goes unready at once: /readyz answers 503 (a balancer stops sending clients here). New
 *    tunnels that still arrive within `shutdown.unreadyMs` (the balancer has not looked yet) are
 *    served; after it they are refused with 503/ONEPORT_ERR_SHUTTING_DOWN and Retry-After. The
 *    port stays open until the end, so nothing is refused at the TCP level.
 * 2. After `shutdown.unreadyMs` (time for the balancer's health check to see it), with
 *    `--move-vms` it asks the leader to move each VM it owns to the VM's replica (or the least
 *    busy other up node): the existing move path, so every node reroutes those VMs' tunnels.
 * 3. It tells its remaining clients to resume elsewhere: WebSocket clients get 4001 naming another
 *    up node (the VM's owner when that is another node); stream clients (CONNECT, native RDP,
 *    RD Gateway) see their connection close, and reconnect through the balancer. A `oneport.v1`
 *    leg this node only relays (its session is held at the VM's owner, tunnel/relays.ts) gets 4001
 *    `{"resume":true}`: the session is parked there and resumed through another node, and the
 *    console notices nothing.
 * 4. It waits until no tunnel is left here (hops from other entry nodes included) and none is
 *    being set up (each one that opens is told within PROGRESS_MS), or `drainMs` has passed since
 *    the start; the caller then stops the node.
 */
import { type Dispatcher, request } from 'undici';
import type { ClusterView } from './cluster/view.js';
import type { Directory } from './directory/directory.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { GatewayContext } from './context.js';
import * as commands from './directory/commands.js';
import type { VmRecord } from './directory/directory.js';
import { OneportError } from './errors.js';
import { ACTING_HEADER, CLIENT_HEADER, FORWARDED_BY_HEADER } from './cluster/peers.js';
import { rerouteMessage } from './tunnel/close.js';
import type { Tunnel } from './tunnel/registry.js';

export interface DrainOptions {
  /** Move the VMs this node owns to their replicas or other up nodes first. */
  readonly moveVms: boolean;
  /** The whole drain's budget, from its start: then the remaining tunnels are closed. */
  readonly drainMs: number;
  /** Between going unready and telling clients: time for a balancer to stop sending them here. */
  readonly unreadyMs: number;
  /** What started it (logged): a signal's name, `api` or `restart`. */
  readonly cause: string;
  /** Refuse new tunnels (503) and answer readyz 503. Off for a restart: a successor accepts instead. @default true */
  readonly refuse?: boolean;
  /** Clients reconnect to this same node (a successor process took the port), not another one. */
  readonly resumeHere?: boolean;
  /** Who moves the VMs (`moveVms`): with workers, the primary, once for the node. @default moveOwnVms here */
  readonly mover?: (deadline: number) => Promise<number>;
}

/** What moving a node's VMs away needs (drain.ts moveOwnVms): a gateway's context, or a primary's parts. */
export interface MoveDeps {
  readonly dir: Directory;
  readonly cluster: ClusterView;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Node TLS to the leader (its API's `vm move`). */
  readonly dispatcher: Dispatcher;
  readonly requestTimeoutMs: number;
}

export interface DrainResult {
  readonly moved: number;
  readonly told: number;
  /** Tunnels still open when the drain ended (closed by the stop that follows). */
  readonly left: number;
  readonly elapsedMs: number;
}

/** How often a drain logs its progress and tells tunnels that slipped in after it started. */
const PROGRESS_MS = 1000;

/** WebSocket transports that understand 4001 (CONTRACT section 4); the rest are stream clients. */
const REROUTABLE = new Set<Tunnel['transport']>(['websocket', 'rdcleanpath']);

export async function drainNode(ctx: GatewayContext, opts: DrainOptions): Promise<DrainResult> {
  const start = Date.now();
  const { log, metrics, tunnels, cluster } = ctx;
  // Unready at once, so the balancer stops sending clients here; new tunnels that still arrive
  // meanwhile (it has not looked yet) are served, and handed over with the others.
  if (opts.refuse ?? true) ctx.lifecycle.unready = true;
  metrics.draining.set(1);
  log.info(
    { event: 'drain-started', cause: opts.cause, tunnels: tunnels.size, moveVms: opts.moveVms, drainMs: opts.drainMs, unreadyMs: opts.unreadyMs },
    `draining (${opts.cause}): ${(opts.refuse ?? true) ? 'unready, new tunnels refused' : 'a successor takes new connections'}; ${tunnels.size} tunnel(s) to hand over`,
  );
  const deadline = start + opts.drainMs;
  if (opts.unreadyMs > 0) await sleep(Math.min(opts.unreadyMs, Math.max(0, deadline - Date.now())));
  if (opts.refuse ?? true) ctx.lifecycle.shuttingDown = true;

  let moved = 0;
  if (opts.moveVms && cluster) {
    moved = await (opts.mover ?? ((d) => moveOwnVms({ dir: ctx.dir, cluster, log, metrics, dispatcher: ctx.leaderLink!.dispatcher, requestTimeoutMs: ctx.config.http.requestTimeoutMs }, d)))(deadline);
  }

  // Each client tunnel is told once; tunnels opened just before the refusal are caught on the next round.
  const told = new WeakSet<Tunnel>();
  let toldCount = 0;
  const tell = (): void => {
    for (const t of tunnels.clientTunnels()) {
      if (told.has(t)) continue;
      told.add(t);
      toldCount++;
      if (REROUTABLE.has(t.transport)) {
        metrics.drainTold.inc({ action: 'reroute' });
        t.pump.close('rerouted', rerouteMessage(ctx.config.tunnel.rerouteRetryMs, opts.resumeHere ? cluster?.nodeId : resumeAt(ctx, t)));
      } else {
        metrics.drainTold.inc({ action: 'close' });
        t.pump.close('shutdown');
      }
    }
  };
  // oneport.v1 legs relayed to the node holding their session (the VM's owner): the session stays
  // there, parked for the client's reconnect through another node; nothing reaches the console.
  const handOver = (): void => {
    const n = ctx.relays.handOver((r) => rerouteMessage(ctx.config.tunnel.rerouteRetryMs, opts.resumeHere ? cluster?.nodeId : resumeAtHolder(ctx, r.holder), { resume: true }));
    if (n > 0) metrics.drainTold.inc({ action: 'resume' }, n);
    toldCount += n;
  };
  tell();
  handOver();
  const left = (): number => tunnels.size + tunnels.settingUp + ctx.relays.size;
  log.info({ event: 'drain-told', tunnels: toldCount, left: left() }, `drain: ${toldCount} client tunnel(s) sent elsewhere`);

  const progress = setInterval(() => {
    tell();
    handOver();
    log.info({ event: 'drain-progress', tunnels: left(), elapsedMs: Date.now() - start }, `drain: ${left()} tunnel(s) left`);
  }, PROGRESS_MS);
  progress.unref();
  let timer: NodeJS.Timeout | undefined;
  // Tunnels still being set up count: one that opens after the last has ended is told like the others.
  await Promise.race([Promise.all([tunnels.whenIdle(), ctx.relays.whenEmpty()]), new Promise<void>((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now()))))]);
  clearTimeout(timer);
  clearInterval(progress);
  const result = { moved, told: toldCount, left: left(), elapsedMs: Date.now() - start };
  log.info({ event: 'drain-done', ...result }, result.left === 0 ? `drained in ${result.elapsedMs} ms` : `drain period over: ${result.left} tunnel(s) still open are closed`);
  return result;
}

/**
 * Move every VM this node owns to its replica (or the least busy other up node) through the
 * leader, until `deadline`; resolves with how many moved.
 */
export async function moveOwnVms(d: MoveDeps, deadline: number): Promise<number> {
  const { log, metrics, cluster } = d;
  let moved = 0;
  for (const vm of d.dir.vmsOnNode(cluster.nodeId)) {
    if (Date.now() >= deadline) break;
    const target = moveTarget(cluster, vm);
    if (target === undefined) {
      metrics.drainMoves.inc({ result: 'no-target' });
      log.warn({ event: 'drain-vm-not-moved', vm: vm.name }, `drain: no other up node to move ${vm.name} to; it stays here`);
      continue;
    }
    try {
      await moveThroughLeader(d, vm.name, target, Math.max(1, Math.min(d.requestTimeoutMs, deadline - Date.now())));
      moved++;
      metrics.drainMoves.inc({ result: 'ok' });
      log.info({ event: 'drain-vm-moved', vm: vm.name, node: target }, `drain: ${vm.name} moved to ${target}`);
    } catch (err) {
      metrics.drainMoves.inc({ result: 'failed' });
      log.warn({ event: 'drain-vm-not-moved', vm: vm.name, node: target, err: (err as Error).message }, `drain: moving ${vm.name} to ${target} failed`);
    }
  }
  return moved;
}

/** Up members other than this node, least busy first (by the tunnels their heartbeats report). */
function otherUpNodes(cluster: ClusterView | undefined): string[] {
  if (!cluster) return [];
  return cluster
    .nodes()
    .filter((p) => p.state === 'up' && p.info.id !== cluster.nodeId)
    .sort((a, b) => (a.heartbeat?.tunnels ?? 0) - (b.heartbeat?.tunnels ?? 0))
    .map((p) => p.info.id);
}

/** Where a moved VM goes: its replica when that is up, else the least busy other up node. */
function moveTarget(cluster: ClusterView, vm: VmRecord): string | undefined {
  const up = otherUpNodes(cluster);
  if (vm.replica !== undefined && up.includes(vm.replica)) return vm.replica;
  return up[0];
}

/** The node a rerouted client is pointed at: its VM's owner when that is another up node, else the least busy one. */
function resumeAt(ctx: GatewayContext, t: Tunnel): string | undefined {
  const up = otherUpNodes(ctx.cluster);
  const owner = ctx.dir.getVm(t.vm)?.node;
  if (owner !== undefined && up.includes(owner)) return owner;
  return up[0];
}

/** Where a client of a session held at `holder` resumes: through the holder itself when it is another up node, else the least busy. */
function resumeAtHolder(ctx: GatewayContext, holder: string): string | undefined {
  const up = otherUpNodes(ctx.cluster);
  return up.includes(holder) ? holder : up[0];
}

/** `vm move`, executed by the leader: here when this node leads, else over node TLS as the machine's administrator. */
async function moveThroughLeader(d: MoveDeps, vm: string, node: string, timeoutMs: number): Promise<void> {
  const { cluster } = d;
  if (cluster.isLeader()) {
    await commands.moveVm(d.dir, vm, node, { nodeState: (n) => cluster.node(n)?.state });
    return;
  }
  const leader = await cluster.leaderPeer();
  if (!leader) throw new OneportError('ONEPORT_ERR_NOT_LEADER');
  const res = await postToNode({ nodeId: cluster.nodeId, dispatcher: d.dispatcher }, leader.address, `/api/vms/${encodeURIComponent(vm)}/move`, { node }, timeoutMs);
  if (res.status !== 200) throw new Error(`the leader ${leader.node} answered ${res.status}: ${res.text.slice(0, 200)}`);
}

/**
 * A POST to another node's API over node TLS, as this machine's administrator (the caller has
 * checked that the request comes from one).
 */
export async function postToNode(from: { nodeId: string; dispatcher: Dispatcher }, address: string, path: string, body: unknown, timeoutMs: number): Promise<{ status: number; text: string }> {
  const res = await request(`https://${address}${path}`, {
    method: 'POST',
    headers: { [FORWARDED_BY_HEADER]: from.nodeId, [CLIENT_HEADER]: 'local', [ACTING_HEADER]: 'local-admin', 'content-type': 'application/json' },
    body: JSON.stringify(body),
    dispatcher: from.dispatcher,
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: res.statusCode, text: await res.body.text() };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
