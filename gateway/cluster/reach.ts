/**
 * How a cluster node reaches a console (tunnel/reach.ts): its own VMs' consoles directly; another
 * node's either directly too (`cluster.consoleDial: "direct"`, when every node can route to every
 * console) or through the owner's one port (`"via-owner"`, node-to-node mutual TLS, peers.ts).
 */
import type { Config } from '../config.js';
import type { Directory, VmRecord } from '../directory/directory.js';
import type { Metrics } from '../metrics.js';
import { ReachFailure } from '../tunnel/failures.js';
import { type Reach, localReach } from '../tunnel/reach.js';
import type { ClusterView } from './view.js';
import type { PeerView } from './membership.js';

/** How long the owner's port gets to answer when a hop ends, to tell its death from a console close. */
const OWNER_PROBE_MS = 500;

/**
 * Is `owner` a node to hop to? An up node, and a suspect one too: its heartbeat stopped, but
 * nobody has failed it over, and the directory still names it. A node cut from Redis only is
 * suspect for as long as the cut lasts while its port answers (so it is never failed over, and its
 * VMs have no other owner): the hop through it works, as it needs nothing from Redis on the
 * owner's side (a hop is authorized by the node certificate and the owner's mirror, and counted
 * by the entry node). A suspect node that is really silent does not answer the hop either: the
 * hop is given up when the VM's record changes (the failover), or at the hold's or dial's
 * deadline, as for an up node that died a moment ago.
 */
function hopTo(owner: PeerView): boolean {
  return owner.state === 'up' || owner.state === 'suspect';
}

export function clusterReach(cluster: ClusterView, dir: Directory, config: Config, metrics: Metrics): Reach {
  const viaOwner = (vm: VmRecord): boolean => vm.node !== cluster.nodeId && config.cluster.consoleDial === 'via-owner';
  // This node's own consoles (and every console with direct dialling) are dialled as on one node.
  const local = localReach({ dialTimeoutMs: config.tunnel.dialTimeoutMs, metrics });
  return {
    async reach(target, signal) {
      if (!viaOwner(target.vm)) return local.reach(target, signal);
      const started = process.hrtime.bigint();
      try {
        const { vm, endpoint } = target;
        const owner = cluster.node(vm.node);
        if (!owner || !hopTo(owner)) {
          throw new ReachFailure('OWNER_DOWN', { code: 'ONEPORT_ERR_VM_RECOVERING', message: `the VM's node ${vm.node} is not reachable; the cluster is failing it over`, retryAfter: 5 });
        }
        // A hop to a silent owner waits for the dial timeout (5 s by default); the cluster may fail
        // the VM over sooner (about 2.5 s). Give the hop up the moment the VM's record changes, as
        // OWNER_MOVING, so that the hold (tunnel/hold.ts) retries on the new owner at once.
        const moved = new AbortController();
        const onChange = (c: { kind: string; name?: string }): void => {
          if (c.kind !== 'vm' || c.name !== vm.name) return;
          const now = dir.getVm(vm.name);
          if (!now || now.node !== vm.node || now.epoch !== vm.epoch) moved.abort();
        };
        dir.on('change', onChange);
        const gaveUp = new Promise<never>((_, reject) => {
          moved.signal.addEventListener('abort', () => reject(new ReachFailure('OWNER_MOVING', { code: 'ONEPORT_ERR_VM_RECOVERING', retryAfter: 5 })), { once: true });
        });
        gaveUp.catch(() => undefined);
        try {
          return await Promise.race([
            cluster.peers.hop(
              owner.info.address,
              vm.node,
              { vm: vm.name, protocol: endpoint.protocol, port: endpoint.publishedPort, user: target.user.name, epoch: vm.epoch },
              AbortSignal.any([signal, moved.signal]),
              config.tunnel.dialTimeoutMs,
            ),
            gaveUp,
          ]);
        } finally {
          dir.off('change', onChange);
        }
      } finally {
        metrics.observeSetup('dial', started);
      }
    },
    changingHands(vm) {
      if (local.changingHands(vm)) return true;
      if (vm.node === cluster.nodeId) return false;
      const owner = cluster.node(vm.node);
      return owner === undefined || !hopTo(owner);
    },
    remote: (vm) => vm.node !== cluster.nodeId,
    endJudge(vm) {
      if (!viaOwner(vm)) return undefined;
      return async () => {
        const now = dir.getVm(vm.name);
        if (!now || now.node !== vm.node || now.epoch !== vm.epoch) return 'rerouted';
        const owner = cluster.node(vm.node);
        if (!owner || !hopTo(owner)) return 'rerouted';
        return (await cluster.peers.probe(owner.info.address, OWNER_PROBE_MS)) ? undefined : 'rerouted';
      };
    },
  };
}
