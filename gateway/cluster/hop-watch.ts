/**
 * Live tunnels reached through their VM's owner (the hop, peers.ts) when the owner stops answering
 * this node but the cluster does not fail it over: cut from its peers only, it still heartbeats to
 * Redis, so nothing moves its VMs and nothing tells the tunnel (reroute.ts follows moves). Its
 * bytes stop coming and, without this, the client waits for as long as the cut lasts.
 *
 * A hop has no framing of its own to carry a ping, so the ping is the owner's port: a tunnel whose
 * hop brought nothing for `silentMs` gets its owner's port probed (TLS + /healthz with the node
 * certificates, the same probe as the failover's, one at a time per owner however many tunnels
 * wait on it). An idle console is common (nothing changes on screen): its owner answers and the
 * tunnel is kept, to be asked about again after another `silentMs`. An owner whose port does not
 * answer within `probeMs` has its silent tunnels ended as a reroute (WebSocket 4001 with
 * `retryMs`; a CONNECT client sees its connection close), so the client reconnects: its new
 * tunnel is held like any other (hold.ts), and answered 503 / 4503 when the owner is still out of
 * reach at the end of the hold. The gateway still dials only what the directory says, through the
 * owner: no console is dialled around it.
 */
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { rerouteMessage } from '../tunnel/close.js';
import type { Tunnel, TunnelRegistry } from '../tunnel/registry.js';

export interface HopWatchDeps {
  readonly tunnels: TunnelRegistry;
  /** This node: tunnels to its own consoles have no hop. */
  readonly self: string;
  /** How often to look. */
  readonly everyMs: number;
  /** How long a hop may bring nothing before its owner's port is probed. */
  readonly silentMs: number;
  /** The probe's deadline. */
  readonly probeMs: number;
  /** Node `id`'s advertised address, if the cluster knows the node. */
  readonly address: (node: string) => string | undefined;
  readonly probe: (address: string, timeoutMs: number) => Promise<boolean>;
  /** Bound of the jittered `retryMs` told to the client (config tunnel.rerouteRetryMs). */
  readonly rerouteRetryMs: number;
  readonly metrics: Metrics;
  readonly log: Logger;
}

interface Seen {
  /** Bytes the owner had sent when last looked at. */
  bytes: number;
  /** When they last changed, or the owner last answered a probe (performance.now()). */
  since: number;
}

/** Start watching; returns the function that stops it. */
export function watchHops(deps: HopWatchDeps): () => void {
  const seen = new WeakMap<Tunnel, Seen>();
  const probing = new Set<string>();
  const look = (): void => {
    const now = performance.now();
    const silent = new Map<string, Tunnel[]>();
    for (const t of deps.tunnels.clientTunnels()) {
      if (t.node === deps.self) continue;
      const bytes = t.pump.bytesToClient;
      const s = seen.get(t);
      if (!s || s.bytes !== bytes) {
        seen.set(t, { bytes, since: now });
        continue;
      }
      if (now - s.since < deps.silentMs || probing.has(t.node)) continue;
      const list = silent.get(t.node);
      if (list) list.push(t);
      else silent.set(t.node, [t]);
    }
    for (const [node, list] of silent) void judge(node, list);
  };
  const judge = async (node: string, list: Tunnel[]): Promise<void> => {
    const address = deps.address(node);
    if (address === undefined) return;
    probing.add(node);
    const before = list.map((t) => t.pump.bytesToClient);
    let answered: boolean;
    try {
      answered = await deps.probe(address, deps.probeMs);
    } finally {
      probing.delete(node);
    }
    const now = performance.now();
    let ended = 0;
    for (const [i, t] of list.entries()) {
      const s = seen.get(t);
      // Bytes came meanwhile: the hop is alive, whatever the probe said.
      if (!s || t.pump.bytesToClient !== before[i]) continue;
      if (answered) {
        s.since = now;
        continue;
      }
      t.pump.close('rerouted', rerouteMessage(deps.rerouteRetryMs));
      ended++;
    }
    if (ended > 0) {
      deps.metrics.rerouted.inc(ended);
      deps.log.warn(
        { event: 'hop-silent', node, address, tunnels: ended, silentMs: deps.silentMs, probeMs: deps.probeMs },
        `node ${node} brought nothing for ${deps.silentMs} ms and its port did not answer within ${deps.probeMs} ms: ${ended} tunnel(s) through it told to reconnect`,
      );
    }
  };
  const timer = setInterval(look, deps.everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
