/**
 * Runs a request handler whose promise nobody awaits (Node's 'request', 'connect' and 'upgrade'
 * events): a failure it did not answer itself is a bug, so it is logged at error level and counted
 * (`oneport_internal_errors_total{where}`), and `answer` closes that one connection. It never
 * becomes an unhandled rejection, which would stop the process and every tunnel in it.
 */
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

export function guard(deps: { readonly metrics: Metrics; readonly log: Logger }, where: string, work: Promise<unknown>, answer: (e: unknown) => void, fields: Record<string, unknown> = {}): void {
  work.catch((e: unknown) => {
    deps.metrics.internalErrors.inc({ where });
    deps.log.error({ err: e, event: 'handler-failed', where, ...fields }, `${where} handler failed`);
    answer(e);
  });
}
