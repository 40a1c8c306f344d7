/**
 * How a console is reached, handed to the broker as a dependency so that nothing in tunnel/ or
 * http/ knows about the cluster: a single node dials the console (`localReach`); a cluster node
 * dials it or goes through the VM's owner node (cluster/reach.ts).
 */
import type net from 'node:net';
import type { VmRecord } from '../directory/directory.js';
import type { Metrics } from '../metrics.js';
import type { ConsoleStream } from './console-stream.js';
import { dial } from './dial.js';
import type { CloseReason } from './pump.js';
import type { TunnelTarget } from './request.js';

export interface ReachedConsole {
  /** The console socket, or a stream in front of it while the console handshake still runs (console-stream.ts). */
  readonly socket: ConsoleStream;
  /**
   * Bytes already counted on the socket that are ours, not the tunnel's: a hop's CONNECT request
   * and its answer. The pump subtracts them, so logs and metrics count only what crossed.
   */
  readonly preface: { readonly written: number; readonly read: number };
}

export const NO_PREFACE = Object.freeze({ written: 0, read: 0 });

export interface Reach {
  /** Connect to the target's console now; failures are ReachFailures (or definite OneportErrors). */
  reach(target: TunnelTarget, signal: AbortSignal): Promise<ReachedConsole>;
  /** Is the VM between owners: recovering, migrating, or owned by a node the cluster no longer hears? */
  changingHands(vm: VmRecord): boolean;
  /** Is the VM's console on another node, so that a silent dial may mean a dying owner? */
  remote(vm: VmRecord): boolean;
  /**
   * For a tunnel reached through another node: when its console leg ends cleanly, was that the
   * owner node going away (a killed process closes its sockets cleanly too)? 'rerouted' if so.
   */
  endJudge(vm: VmRecord): (() => Promise<CloseReason | undefined>) | undefined;
}

export function localReach(opts: { dialTimeoutMs: number; metrics: Metrics }): Reach {
  return {
    async reach(target, signal) {
      const started = process.hrtime.bigint();
      try {
        return { socket: await dial(target.endpoint, { timeoutMs: opts.dialTimeoutMs, signal, metrics: opts.metrics }), preface: NO_PREFACE };
      } finally {
        opts.metrics.observeSetup('dial', started);
      }
    },
    changingHands: (vm) => vm.state === 'recovering' || vm.state === 'migrating',
    remote: () => false,
    endJudge: () => undefined,
  };
}
