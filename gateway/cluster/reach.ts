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
import type { Cluster } from './cluster.js';

/** How long the owner's port gets to answer when a hop ends, to tell its death from a console close. */
const OWNER_PROBE_MS = 500;

export function clusterReach(cluster: Cluster, dir: Directory, config: Config, metrics: Metrics): Reach {
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
        if (!owner || owner.state !== 'up') {
          throw new ReachFailure('OWNER_DOWN', { code: 'ONEPORT_ERR_VM_RECOVERING', message: `the VM's node ${vm.node} is not reachable; the cluster is failing it over`, retryAfter: 5 });
        }
        return await cluster.peers.hop(
          owner.info.address,
          vm.node,
          { vm: vm.name, protocol: endpoint.protocol, port: endpoint.publishedPort, user: target.user.name, epoch: vm.epoch },
          signal,
          config.tunnel.dialTimeoutMs,
        );
      } finally {
        metrics.observeSetup('dial', started);
      }
    },
    changingHands(vm) {
      if (local.changingHands(vm)) return true;
      if (vm.node === cluster.nodeId) return false;
      const owner = cluster.node(vm.node);
      return owner === undefined || owner.state !== 'up';
    },
    remote: (vm) => vm.node !== cluster.nodeId,
    endJudge(vm) {
      if (!viaOwner(vm)) return undefined;
      return async () => {
        const now = dir.getVm(vm.name);
        if (!now || now.node !== vm.node || now.epoch !== vm.epoch) return 'rerouted';
        const owner = cluster.node(vm.node);
        if (!owner || owner.state !== 'up') return 'rerouted';
        return (await cluster.peers.probe(owner.info.address, OWNER_PROBE_MS)) ? undefined : 'rerouted';
      };
    },
  };
}
