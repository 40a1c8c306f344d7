/**
 * Ask every other node of the cluster the same API question, node to node (mutual TLS with the
 * node certificate, the dispatcher that forwards to the leader), within a deadline. Used by the
 * session list and the terminate calls (GET/DELETE `...?local=1`, which only a node may call).
 *
 * Live numbers (bytes so far) come from the node that holds the tunnel, when asked: nothing is
 * written anywhere while nobody asks. Every node is in the answer: one that did not answer in
 * time, or is known to be down or gone, is reported as such, never silently left out.
 */
import { type Dispatcher, request } from 'undici';
import type { NodeState } from './membership.js';
import { FORWARDED_BY_HEADER } from './peers.js';

export interface NodeAnswer<T> {
  readonly node: string;
  readonly state: NodeState;
  /** False: `error` says why (timeout, refused, its state). */
  readonly answered: boolean;
  readonly body?: T;
  readonly error?: string;
}

export interface FanoutDeps {
  readonly self: string;
  readonly nodes: () => ReadonlyArray<{ readonly info: { readonly id: string; readonly address: string }; readonly state: NodeState }>;
  readonly dispatcher: Dispatcher;
}

/** How long another node gets to answer. */
export const PEER_ANSWER_MS = 2000;

type Peer = ReturnType<FanoutDeps['nodes']>[number];

/** One call to one node: its status and JSON answer, or why there is none. */
async function ask<T>(deps: FanoutDeps, p: Peer, method: 'GET' | 'DELETE', path: string, timeoutMs: number): Promise<NodeAnswer<T> & { readonly status?: number }> {
  const base = { node: p.info.id, state: p.state };
  if (p.state !== 'up' && p.state !== 'suspect') return { ...base, answered: false, error: `node is ${p.state}` };
  try {
    const res = await request(`https://${p.info.address}${path}`, {
      method,
      headers: { [FORWARDED_BY_HEADER]: deps.self },
      dispatcher: deps.dispatcher,
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.body.text();
    return { ...base, answered: true, status: res.statusCode, body: JSON.parse(text) as T };
  } catch (err) {
    const e = err as Error;
    return { ...base, answered: false, error: e.name === 'TimeoutError' || e.name === 'AbortError' ? `no answer within ${timeoutMs} ms` : e.message };
  }
}

/**
 * `method path` on every node but this one that may hold tunnels (up, or suspect: silent for a
 * moment, maybe alive); anything but a 200 counts as no answer. Down and left nodes are
 * reported, not asked.
 */
export async function askOtherNodes<T>(deps: FanoutDeps, method: 'GET' | 'DELETE', path: string, timeoutMs = PEER_ANSWER_MS): Promise<Array<NodeAnswer<T>>> {
  const others = deps.nodes().filter((p) => p.info.id !== deps.self);
  return Promise.all(
    others.map(async (p) => {
      const { status, ...a } = await ask<T>(deps, p, method, path, timeoutMs);
      return a.answered && status !== 200 ? { node: a.node, state: a.state, answered: false, error: `answered ${status}` } : a;
    }),
  );
}

/** The same call to one node, for a tunnel that lives there; undefined when the node is unknown. */
export async function askNode<T>(deps: FanoutDeps, node: string, method: 'GET' | 'DELETE', path: string, timeoutMs = PEER_ANSWER_MS): Promise<(NodeAnswer<T> & { readonly status?: number }) | undefined> {
  const p = deps.nodes().find((n) => n.info.id === node);
  return p ? ask<T>(deps, p, method, path, timeoutMs) : undefined;
}
