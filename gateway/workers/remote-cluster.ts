/**
 * A worker's view of the cluster (README "Workers"): the primary holds the node's one leader
 * lease and one membership entry (cluster.ts) and sends each worker what it sees, on every change
 * of leader and every half heartbeat. Node-to-node TLS (hops, relays, probes) is the worker's own,
 * with the node's certificate.
 *
 * Directory writes the worker makes as leader (the admin API, a `vm move`) go through the
 * primary's mirror (fed-directory.ts), with the primary's fencing token.
 */
import { EventEmitter } from 'node:events';
import { X509Certificate } from 'node:crypto';
import type net from 'node:net';
import type { LeaderInfo } from '../cluster/lease.js';
import type { PeerView } from '../cluster/membership.js';
import { type NodeIdentity, Peers, peerNodeId } from '../cluster/peers.js';
import { type ClusterStatus, type ClusterView, isNodeAddressIn } from '../cluster/view.js';
import type { Rpc } from './ipc.js';

/** What the primary sends its workers about the cluster. */
export interface ClusterNote {
  readonly leader: LeaderInfo | null;
  readonly highestEpoch: number;
  /** This node leads (its lease is valid as the primary sees it). */
  readonly leads: boolean;
  readonly nodes: readonly PeerView[];
}

export class RemoteCluster implements ClusterView {
  readonly peers: Peers;
  private note: ClusterNote;
  private members = new Map<string, PeerView>();
  private readonly changes = new EventEmitter();
  private readonly caCert: X509Certificate;

  constructor(
    private readonly rpc: Rpc,
    readonly nodeId: string,
    identity: NodeIdentity,
    private readonly opts: { readonly prefix: string; readonly dialTimeoutMs: number; readonly leaseMs: number },
    first: ClusterNote,
  ) {
    this.caCert = new X509Certificate(identity.ca);
    this.peers = new Peers(identity, opts.dialTimeoutMs);
    this.note = first;
    this.apply(first);
  }

  /** The primary's latest view. */
  apply(note: ClusterNote): void {
    this.note = note;
    this.members = new Map(note.nodes.map((p) => [p.info.id, p]));
    this.changes.emit('change');
  }

  peerNode(socket: net.Socket): string | undefined {
    return peerNodeId(socket, this.caCert);
  }
  isNodeAddress(address: string): boolean {
    return isNodeAddressIn(this.note.nodes, this.nodeId, address);
  }
  isLeader(): boolean {
    return this.note.leads;
  }
  leader(): LeaderInfo | undefined {
    return this.note.leader ?? undefined;
  }
  highestEpoch(): number {
    return this.note.highestEpoch;
  }
  node(id: string): PeerView | undefined {
    return this.members.get(id);
  }
  nodes(): readonly PeerView[] {
    return this.note.nodes;
  }
  peerAddress(id: string): string | undefined {
    const p = this.members.get(id);
    return p && p.state === 'up' ? p.info.address : undefined;
  }

  /** As the Cluster's: the leader when it is another node, waiting (up to twice the lease) through an election. */
  async leaderPeer(): Promise<{ node: string; address: string } | undefined> {
    const deadline = performance.now() + this.opts.leaseMs * 2;
    for (;;) {
      const leader = this.leader();
      const settled = leader !== undefined && (leader.node !== this.nodeId || this.isLeader());
      if (settled || performance.now() >= deadline) {
        const address = leader && leader.node !== this.nodeId ? this.peerAddress(leader.node) : undefined;
        return leader && address ? { node: leader.node, address } : undefined;
      }
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.changes.removeListener('change', done);
          resolve();
        };
        const timer = setTimeout(done, Math.max(1, deadline - performance.now()));
        this.changes.once('change', done);
      });
    }
  }

  status(): Promise<ClusterStatus> {
    return this.rpc.call<ClusterStatus>('cluster-status');
  }

  async close(): Promise<void> {
    this.changes.removeAllListeners();
    await this.peers.close().catch(() => undefined);
  }
}
