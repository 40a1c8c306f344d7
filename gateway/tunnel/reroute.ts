/**
 * Sessions follow their VM: when its owner changes (failover or planned move), every live tunnel
 * to it here ends on purpose, so no client sits on a dead console waiting for a TCP timeout.
 * WebSocket clients get 4001 with `retryMs` and the new owner, and reconnect with their resume
 * token; CONNECT clients see the connection close.
 */
import type { Directory } from '../directory/directory.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { rerouteMessage } from './close.js';
import type { TunnelRegistry } from './registry.js';
import type { Relays } from './relays.js';

export interface RerouteDeps {
  readonly dir: Directory;
  readonly tunnels: TunnelRegistry;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Bound of the jittered wait told to rerouted clients (config tunnel.rerouteRetryMs). */
  readonly rerouteRetryMs: number;
  /** `oneport.v1` legs relayed to the node holding their session: they end with their VM's move too. */
  readonly relays?: Relays;
}

/**
 * A hop's entry node tells its client (4001) and closes the hop itself; closing here first would
 * reach it as a plain console close. Only a hop left open (its entry node did not hear of the
 * move) is closed from this side, this long after.
 */
const HOP_REROUTE_GRACE_MS = 1000;

export function rerouteMoved(deps: RerouteDeps, vmName: string): number {
  const vm = deps.dir.getVm(vmName);
  // A deleted VM did not move: its tunnels end for good (revoke.ts), not "reconnect".
  if (!vm) return 0;
  let n = 0;
  for (const t of deps.tunnels.byVm(vmName)) {
    if (vm.node === t.node) continue;
    const reason = rerouteMessage(deps.rerouteRetryMs, vm.node);
    if (t.transport === 'hop') setTimeout(() => t.pump.close('rerouted', reason), HOP_REROUTE_GRACE_MS).unref();
    else t.pump.close('rerouted', reason);
    n++;
  }
  n += deps.relays?.rerouteMoved(vmName, vm, rerouteMessage(deps.rerouteRetryMs, vm.node)) ?? 0;
  if (n > 0) {
    deps.metrics.rerouted.inc(n);
    deps.log.info({ event: 'tunnels-rerouted', vm: vmName, tunnels: n, node: vm.node, epoch: vm.epoch }, `${vmName} moved: ${n} tunnel(s) told to reconnect`);
  }
  return n;
}

/** Follow the directory: one listener for the node's life; returns the function that removes it. */
export function followMoves(deps: RerouteDeps): () => void {
  const onChange = (c: { kind: string; name?: string }): void => {
    if (c.kind === 'vm' && c.name !== undefined) rerouteMoved(deps, c.name);
  };
  const onResync = (): void => {
    for (const name of new Set([...deps.tunnels.vms(), ...(deps.relays?.list().map((r) => r.vm) ?? [])])) rerouteMoved(deps, name);
  };
  deps.dir.on('change', onChange);
  deps.dir.on('resync', onResync);
  return () => {
    deps.dir.removeListener('change', onChange);
    deps.dir.removeListener('resync', onResync);
  };
}
