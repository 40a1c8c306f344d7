/**
 * What a gateway's request handlers see of the cluster: this node's id, the members and the
 * leader, node-to-node TLS (the directory's fence is the Cluster's own). The Cluster (cluster.ts) is it in one
 * process, and in the primary of a node with workers; a worker sees the primary's view over IPC
 * (workers/remote-cluster.ts), so there is one lease and one membership entry per node.
 */
import type net from 'node:net';
import { parseListen } from '../config.js';
import { normaliseAddress } from '../conninfo.js';
import type { ReseedVerdict } from '../directory/redis.js';
import type { LeaderInfo } from './lease.js';
import type { PeerView } from './membership.js';
import type { Peers } from './peers.js';

export interface ClusterStatus {
  readonly self: string;
  readonly leader: { readonly node: string; readonly epoch: number } | null;
  readonly highestEpoch: number;
  readonly nodes: readonly Record<string, unknown>[];
}

/** The directory's fence (directory/redis.ts `fence`): leader writes carry the lease's token. */
export interface Fence {
  readonly key: string;
  token(): string;
  onFenced(): void;
  reseed(): ReseedVerdict;
}

export interface ClusterView {
  readonly nodeId: string;
  /** Node-to-node TLS: hops, relays, probes, the leader link's dispatcher. */
  readonly peers: Peers;
  /** The node id behind a verified node certificate on this socket, or undefined. */
  peerNode(socket: net.Socket): string | undefined;
  /** Does another node advertise its port at `address` (exempt from the per-address limit)? */
  isNodeAddress(address: string): boolean;
  isLeader(): boolean;
  leader(): LeaderInfo | undefined;
  /** The highest leader epoch seen (reported while there is no leader). */
  highestEpoch(): number;
  node(id: string): PeerView | undefined;
  /** Every node the cluster knows (this one included), as of the last heartbeat. */
  nodes(): readonly PeerView[];
  /** The address of node `id` when it is an up member, else undefined. */
  peerAddress(id: string): string | undefined;
  /** The leader as a peer to forward to, waiting through an election; undefined when none or this node. */
  leaderPeer(): Promise<{ node: string; address: string } | undefined>;
  status(): Promise<ClusterStatus>;
}

/**
 * Does a node of `nodes` other than `self` advertise its port at `address` (a connection's peer
 * IP)? Only nodes advertised by IP literal are recognised; read per call (a handful of nodes).
 */
export function isNodeAddressIn(nodes: readonly PeerView[], self: string, address: string): boolean {
  for (const p of nodes) {
    if (p.info.id === self) continue;
    const at = parseListen(p.info.address);
    if (at && normaliseAddress(at.host) === address) return true;
  }
  return false;
}
