/**
 * The legacy RD Gateway pair across nodes. Behind a plain L4 balancer a client's `RDG_OUT_DATA`
 * and `RDG_IN_DATA` may reach different nodes; no balancer affinity is needed because:
 *
 * - the node that takes an OUT request records it in Redis (`<prefix>rdg:<connection id>` ->
 *   node id, for the pairing deadline) before it answers 200 (so before the client can open IN);
 * - the node that takes the IN request and holds no OUT for it looks the id up, and carries the
 *   request to that node over node TLS (the one port, node certificates both ways) with
 *   `Oneport-Hop: <self>` and `Oneport-Client: <the client's address>`, then relays the bytes both
 *   ways. The holder pairs it like a local IN (same client address); a relayed request is never
 *   relayed again.
 *
 * Only a node may send a relayed request (rdg/entrance.ts checks the node certificate).
 */
import type { Duplex } from 'node:stream';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.js';
import { OneportError } from '../errors.js';
import type { RdgClusterLink } from '../rdg/entrance.js';
import type { ClusterView } from './view.js';

const ID = /^[A-Za-z0-9{}_-]{1,64}$/;

export function rdgClusterLink(cluster: ClusterView, redis: Redis, prefix: string, log: Logger): RdgClusterLink {
  const key = (id: string): string => `${prefix}rdg:${id}`;
  return {
    self: cluster.nodeId,
    async announce(id, ttlMs) {
      if (ID.test(id)) await redis.set(key(id), cluster.nodeId, 'PX', ttlMs);
    },
    forget(id) {
      if (ID.test(id)) redis.del(key(id)).catch(() => undefined);
    },
    async locate(id) {
      if (!ID.test(id)) return undefined;
      return (await redis.get(key(id))) ?? undefined;
    },
    async relay(node: string, socket: Duplex, head: Buffer, client: string) {
      const address = cluster.peerAddress(node);
      if (!address) throw new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `node ${node} holding RDG_OUT_DATA is not up`);
      const gone = new AbortController();
      const onClose = (): void => gone.abort();
      socket.once('close', onClose);
      let upstream: Duplex;
      try {
        upstream = await cluster.peers.connect(address, node, gone.signal);
      } finally {
        socket.removeListener('close', onClose);
      }
      if (socket.destroyed) {
        upstream.destroy();
        return;
      }
      spliceRelay(socket, upstream, head);
      log.info({ event: 'rdg-relayed', client, node }, `RD Gateway IN request relayed to ${node}, which holds its RDG_OUT_DATA`);
    },
  };
}

/**
 * Carry a request whose head was read (`head`, rewritten for the hop) to `upstream` and relay
 * the bytes both ways; either side's end, error or close ends both. Also the worker-to-worker
 * relay (workers/worker.ts).
 */
export function spliceRelay(socket: Duplex, upstream: Duplex, head: Buffer): void {
  const end = (): void => {
    socket.destroy();
    upstream.destroy();
  };
  upstream.on('error', end);
  upstream.on('close', end);
  socket.on('close', end);
  upstream.write(head);
  socket.pipe(upstream);
  upstream.pipe(socket);
  socket.resume();
}
