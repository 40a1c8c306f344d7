/**
 * Reaching a console with failover in mind (session continuity): a console that does not answer
 * while its VM is changing hands does not fail the client. The client is held (no status line for
 * CONNECT, an open WebSocket) while the VM is recovering or migrating, or its owner is silent; it
 * wakes on the VM's directory change (the new owner marks it running once its console answers),
 * with a jittered backoff as a safety net, and gives up after `holdMs` with 503 / 4503. What is
 * retried is a set of failure codes (failures.ts); an auth or directory error never is.
 */
import type { Directory } from '../directory/directory.js';
import { OneportError } from '../errors.js';
import type { Logger } from '../log.js';
import { OWNER_GOING, RETRY_WHILE_MOVING, failureOf } from './failures.js';
import type { Reach, ReachedConsole } from './reach.js';
import type { TunnelTarget } from './request.js';
import type { VmWatcher } from './watcher.js';

export interface HoldDeps {
  readonly dir: Directory;
  readonly reach: Reach;
  readonly watcher: VmWatcher;
  readonly log: Logger;
  /** How long a client may be held; 0 never holds. */
  readonly holdMs: number;
  /** Safety-net backoff between tries: base doubling to cap (milliseconds), jittered. */
  readonly backoff?: { readonly baseMs: number; readonly capMs: number };
}

export async function reachHeld(deps: HoldDeps, target: TunnelTarget, signal: AbortSignal): Promise<{ console: ReachedConsole; target: TunnelTarget }> {
  // The hold's bound covers a try in flight too, for a console reached through another node: a
  // hop to an owner its peers cannot reach (the owner is alive, so nothing fails it over) would
  // otherwise run to its own dial deadline, past the hold. A local dial keeps its own deadline
  // (a console that does not answer is 502, not 503).
  const holdOver = new AbortController();
  const holdTimer = deps.holdMs > 0 ? setTimeout(() => holdOver.abort(), deps.holdMs) : undefined;
  try {
    return await holdLoop(deps, target, signal, AbortSignal.any([signal, holdOver.signal]));
  } finally {
    clearTimeout(holdTimer);
  }
}

async function holdLoop(deps: HoldDeps, target: TunnelTarget, signal: AbortSignal, untilHoldOver: AbortSignal): Promise<{ console: ReachedConsole; target: TunnelTarget }> {
  const { holdMs, reach } = deps;
  const { baseMs, capMs } = deps.backoff ?? { baseMs: 100, capMs: 2000 };
  const started = Date.now();
  let attempt = 0;
  let held = false;
  const over = (vm: string, cause: unknown): OneportError =>
    new OneportError('ONEPORT_ERR_VM_RECOVERING', `${vm} did not come back within ${Math.round(holdMs / 1000)} s`, { retryAfter: 5, cause });
  for (;;) {
    const vm = deps.dir.getVm(target.vm.name);
    if (!vm) throw new OneportError('ONEPORT_ERR_UNKNOWN_VM');
    if (vm.state === 'down') throw new OneportError('ONEPORT_ERR_VM_DOWN', undefined, { retryAfter: 30 });
    const endpoint = vm.endpoints.find((e) => e.protocol === target.endpoint.protocol);
    if (!endpoint) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    const current: TunnelTarget = { ...target, vm, endpoint };
    let lastError: unknown;
    if (!reach.changingHands(vm)) {
      try {
        const console = await reach.reach(current, reach.remote(vm) ? untilHoldOver : signal);
        if (held) deps.log.info({ event: 'tunnel-held', vm: vm.name, node: vm.node, epoch: vm.epoch, ms: Date.now() - started, attempts: attempt }, `held client reached ${vm.name} on ${vm.node}`);
        return { console, target: current };
      } catch (err) {
        if (!signal.aborted && untilHoldOver.aborted) throw over(vm.name, err);
        const failure = failureOf(err);
        if (signal.aborted || failure === undefined || !RETRY_WHILE_MOVING.has(failure)) throw err;
        const now = deps.dir.getVm(vm.name);
        // The owner node itself going away (not its console): the cluster will fail it over, so
        // wait for that. With direct dialling, a console on another node that does not answer
        // at all may be a dead host too; one that refuses is a live host with no console.
        const ownerGoing = OWNER_GOING.has(failure) || (reach.remote(vm) && (failure === 'DIAL_TIMEOUT' || failure === 'DIAL_UNREACHABLE'));
        const unchanged = now !== undefined && !reach.changingHands(now) && now.epoch === vm.epoch && now.node === vm.node;
        // A running VM on a live owner whose console refuses: nothing is going to change; say so.
        if (!now || holdMs === 0 || (unchanged && !ownerGoing)) throw err;
        lastError = err;
      }
    }
    const left = holdMs - (Date.now() - started);
    if (left <= 0 || signal.aborted) throw over(vm.name, lastError);
    if (!held) {
      held = true;
      deps.log.info({ event: 'tunnel-hold', vm: vm.name, node: vm.node, state: vm.state, epoch: vm.epoch }, `holding a client of ${vm.name} while it changes hands`);
    }
    const backoff = Math.min(capMs, baseMs * 2 ** attempt++) * (0.5 + Math.random() / 2);
    await deps.watcher.next(vm.name, Math.min(backoff, left), signal);
  }
}
