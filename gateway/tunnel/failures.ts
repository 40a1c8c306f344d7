/**
 * Why reaching a console failed, as codes the tunnel's policies can test (undici's retry handler
 * style: `codes.has(err.failure)`, never a regular expression over a message written elsewhere).
 *
 * A `ReachFailure` is also a OneportError, so the client sees the contract's answer (502/4502,
 * 503/4503); the `failure` code is for us: whether to hold the client, and what the log says.
 */
import { type ErrorCode, OneportError } from '../errors.js';

export const FAILURES = {
  /** The console's host answered with a reset: nothing listens there. */
  DIAL_REFUSED: 'the console refused the connection',
  /** No answer within the dial deadline. */
  DIAL_TIMEOUT: 'the console did not answer within the dial deadline',
  /** No route to the console's host (EHOSTUNREACH, ENETUNREACH). */
  DIAL_UNREACHABLE: 'the console\'s host cannot be reached',
  /** Any other socket error while dialling. */
  DIAL_ERROR: 'the console connection failed',
  /** The VM's owner node did not take the node-to-node connection (refused, silent, no TLS). */
  OWNER_SILENT: 'the VM\'s node did not answer',
  /** The owner is not an up member of the cluster: it is being failed over. */
  OWNER_DOWN: 'the VM\'s node is not reachable; the cluster is failing it over',
  /** The owner says the VM is changing hands (its mirror disagrees with ours, or it recovers). */
  OWNER_MOVING: 'the VM\'s node says it is changing hands',
  /** The owner took the hop and closed it, or timed out, before answering. */
  HOP_CLOSED: 'the VM\'s node closed the hop before answering',
  /** The owner answered the hop with a refusal of its own (its console did not answer). */
  HOP_STATUS: 'the VM\'s node refused the hop',
  /** The console answered the connection but not the RDP handshake (X.224, TLS) RDCleanPath needs. */
  CONSOLE_HANDSHAKE: 'the console did not complete the RDP handshake (X.224 or TLS)',
  /** The client left while we were reaching its console. */
  CLIENT_GONE: 'client went away',
} as const;

export type FailureCode = keyof typeof FAILURES;

export class ReachFailure extends OneportError {
  readonly failure: FailureCode;

  constructor(failure: FailureCode, opts: { code?: ErrorCode; message?: string; retryAfter?: number; cause?: unknown } = {}) {
    super(opts.code ?? 'ONEPORT_ERR_CONSOLE_UNREACHABLE', opts.message ?? FAILURES[failure], {
      ...(opts.retryAfter !== undefined ? { retryAfter: opts.retryAfter } : {}),
      ...(opts.cause !== undefined ? { cause: opts.cause } : {}),
    });
    this.failure = failure;
  }
}

export function failureOf(err: unknown): FailureCode | undefined {
  return err instanceof ReachFailure ? err.failure : undefined;
}

/** The dial's errno, as a failure code. */
export function dialFailure(errno: string | undefined): FailureCode {
  switch (errno) {
    case 'ECONNREFUSED':
      return 'DIAL_REFUSED';
    case 'ETIMEDOUT':
      return 'DIAL_TIMEOUT';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
      return 'DIAL_UNREACHABLE';
    default:
      return 'DIAL_ERROR';
  }
}

/**
 * Failures that say "try again once the directory says where the console is now": the console's
 * address or owner may be about to change. A refusal by a live console on a VM that is not
 * changing hands is not among them: nothing will change, the client gets 502 at once.
 */
export const RETRY_WHILE_MOVING: ReadonlySet<FailureCode> = new Set<FailureCode>([
  'DIAL_REFUSED',
  'DIAL_TIMEOUT',
  'DIAL_UNREACHABLE',
  'DIAL_ERROR',
  'OWNER_SILENT',
  'OWNER_DOWN',
  'OWNER_MOVING',
  'HOP_CLOSED',
]);

/**
 * Failures that mean the VM's owner node itself is going away (not its console): hold the client
 * for the failover, even while the directory still shows the VM as running there.
 */
export const OWNER_GOING: ReadonlySet<FailureCode> = new Set<FailureCode>(['OWNER_SILENT', 'OWNER_DOWN', 'OWNER_MOVING', 'HOP_CLOSED']);
