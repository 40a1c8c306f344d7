/**
 * A cluster node with workers has two levels of "where is it held": which node (Redis:
 * the session locator, the RD Gateway pair records) and, on this node, which worker (the
 * primary). These join the two into the one answer the handlers ask for.
 *
 * A worker is named `@<pid>`: never a node id (node ids start with a letter or digit).
 */
import type { RdgClusterLink } from '../rdg/entrance.js';
import type { SessionRelay } from '../tunnel/resume.js';

export function workerName(pid: number | string): string {
  return `@${pid}`;
}

export function isWorkerName(holder: string): boolean {
  return /^@\d{1,10}$/.test(holder);
}

/** The process id in a worker's name. */
export function workerPid(holder: string): string {
  return holder.slice(1);
}

/**
 * Sessions: a session Redis says this node holds is looked up among its workers; legs go to
 * another node over node TLS, or to another worker over its Unix socket.
 */
export function throughWorkers(node: SessionRelay, workers: SessionRelay, nodeId: string): SessionRelay {
  return {
    self: workers.self,
    holder: async (id) => {
      const h = await node.holder(id);
      return h === nodeId ? workers.holder(id) : h;
    },
    ownerOf: (vm) => node.ownerOf(vm),
    relay: (holder, client, r) => (isWorkerName(holder) ? workers : node).relay(holder, client, r),
    local: isWorkerName,
  };
}

/** RD Gateway pairs: the OUT request is recorded at both levels; an IN request finds it at either. */
export function rdgThroughWorkers(node: RdgClusterLink, workers: RdgClusterLink, nodeId: string): RdgClusterLink {
  return {
    self: workers.self,
    async announce(id, ttlMs) {
      await Promise.all([node.announce(id, ttlMs), workers.announce(id, ttlMs)]);
    },
    forget(id) {
      node.forget(id);
      workers.forget(id);
    },
    async locate(id) {
      const n = await node.locate(id);
      return n === nodeId ? workers.locate(id) : n;
    },
    locateLocal: (id) => workers.locate(id),
    relay: (holder, socket, head, client) => (isWorkerName(holder) ? workers : node).relay(holder, socket, head, client),
  };
}
