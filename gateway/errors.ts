/**
 * Every failure a client can see, in one table: a stable ONEPORT_ERR_* code, the HTTP status
 * (API and WebSocket handshake), and the WebSocket close code (CONTRACT section 4). CONNECT uses
 * the HTTP status, except that "who are you?" (401) becomes 407 there, as a proxy must answer.
 * README's "Error codes" section documents each code; a unit test keeps the two in step.
 */
import type { z } from 'zod';

export interface ErrorSpec {
  readonly status: number;
  readonly wsClose: number;
  readonly message: string;
}

export const ERRORS = {
  ONEPORT_ERR_BAD_REQUEST: { status: 400, wsClose: 1008, message: 'malformed request' },
  ONEPORT_ERR_VALIDATION: { status: 400, wsClose: 1008, message: 'invalid request body' },
  ONEPORT_ERR_AUTH_REQUIRED: { status: 401, wsClose: 4401, message: 'credentials required' },
  ONEPORT_ERR_BAD_CREDENTIALS: { status: 401, wsClose: 4401, message: 'invalid user or password' },
  ONEPORT_ERR_TICKET_INVALID: { status: 401, wsClose: 4401, message: 'ticket missing, invalid, expired or already used' },
  ONEPORT_ERR_SESSION_INVALID: { status: 401, wsClose: 4401, message: 'session expired or revoked; log in again' },
  ONEPORT_ERR_FORBIDDEN: { status: 403, wsClose: 4003, message: 'not allowed' },
  ONEPORT_ERR_NOT_ASSIGNED: { status: 403, wsClose: 4003, message: 'this desktop is not assigned to you' },
  ONEPORT_ERR_ADDRESS_LITERAL: { status: 403, wsClose: 4003, message: 'targets are VM names, not addresses' },
  ONEPORT_ERR_CLEARTEXT_PASSWORD: { status: 403, wsClose: 4003, message: 'passwords are accepted only over TLS; use a console ticket' },
  ONEPORT_ERR_TLS_REQUIRED: { status: 403, wsClose: 4003, message: 'this request needs TLS (https:// or wss://)' },
  ONEPORT_ERR_ORIGIN: { status: 403, wsClose: 4003, message: 'origin not allowed' },
  ONEPORT_ERR_ADMIN_ONLY: { status: 403, wsClose: 4003, message: 'admin role required' },
  ONEPORT_ERR_NOT_FOUND: { status: 404, wsClose: 4004, message: 'not found' },
  ONEPORT_ERR_UNKNOWN_VM: { status: 404, wsClose: 4004, message: 'no such VM' },
  ONEPORT_ERR_NO_SUCH_PROTOCOL: { status: 404, wsClose: 4004, message: 'the VM offers no such protocol' },
  ONEPORT_ERR_PORT_NOT_PUBLISHED: { status: 404, wsClose: 4004, message: 'the VM publishes nothing on that port' },
  ONEPORT_ERR_METHOD_NOT_ALLOWED: { status: 405, wsClose: 1008, message: 'method not allowed' },
  ONEPORT_ERR_PAYLOAD_TOO_LARGE: { status: 413, wsClose: 1009, message: 'request body too large' },
  ONEPORT_ERR_RATE_LIMITED: { status: 429, wsClose: 1013, message: 'too many attempts or connections; try again later' },
  ONEPORT_ERR_RESUME_LIMIT: { status: 429, wsClose: 1013, message: 'you hold as many resumable sessions on this node as you may; close one' },
  ONEPORT_ERR_RESUME_BUSY: { status: 503, wsClose: 1013, message: 'this node holds as many resumable-session bytes as it may; try again shortly' },
  ONEPORT_ERR_SESSION_LIMIT: { status: 429, wsClose: 4429, message: 'too many console sessions open for this user or desktop; close one first' },
  ONEPORT_ERR_SESSION_EXPIRED: { status: 403, wsClose: 4008, message: 'the maximum session time is over' },
  ONEPORT_ERR_HEADERS_TOO_LARGE: { status: 431, wsClose: 1008, message: 'request headers too large or too many' },
  ONEPORT_ERR_INTERNAL: { status: 500, wsClose: 1011, message: 'internal error' },
  ONEPORT_ERR_CONSOLE_UNREACHABLE: { status: 502, wsClose: 4502, message: 'the console did not answer' },
  ONEPORT_ERR_NODE_NOT_UP: { status: 503, wsClose: 1013, message: 'that cluster node is not up right now; try again shortly' },
  ONEPORT_ERR_CONSOLE_AUTH: { status: 502, wsClose: 4511, message: 'the console refused the credentials the directory holds for it; an administrator must set its console password' },
  ONEPORT_ERR_CONSOLE_PROTOCOL: { status: 502, wsClose: 4512, message: "the console did not speak the desktop's declared protocol, or not in time" },
  ONEPORT_ERR_CLIENT_PROTOCOL: { status: 400, wsClose: 4400, message: "the client did not speak the desktop's declared protocol, or not in time" },
  ONEPORT_ERR_NODE_UNREACHABLE: { status: 504, wsClose: 1011, message: 'the cluster node concerned did not answer in time' },
  ONEPORT_ERR_VM_RECOVERING: { status: 503, wsClose: 4503, message: 'the VM is being recovered or migrated; try again shortly' },
  ONEPORT_ERR_VM_DOWN: { status: 503, wsClose: 4503, message: 'the VM is down' },
  ONEPORT_ERR_SHUTTING_DOWN: { status: 503, wsClose: 1001, message: 'the gateway is shutting down' },
  ONEPORT_ERR_DIRECTORY_UNAVAILABLE: { status: 503, wsClose: 1013, message: 'the directory (Redis) cannot be reached; nothing was changed, or the change is not confirmed' },
  ONEPORT_ERR_NOT_LEADER: { status: 503, wsClose: 1013, message: 'the cluster is electing a leader; try again shortly' },
  ONEPORT_ERR_CONFLICT: { status: 409, wsClose: 1008, message: 'the record changed meanwhile; read it again and retry' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export class OneportError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly wsClose: number;
  /** Seconds, sent as Retry-After where it applies (429, 503). */
  readonly retryAfter: number | undefined;

  constructor(code: ErrorCode, message?: string, opts?: { retryAfter?: number; cause?: unknown }) {
    const spec = ERRORS[code];
    super(message ?? spec.message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'OneportError';
    this.code = code;
    this.status = spec.status;
    this.wsClose = spec.wsClose;
    this.retryAfter = opts?.retryAfter;
  }

  /** The JSON body of an API error (CONTRACT section 5). */
  toJSON(): { error: { code: ErrorCode; message: string } } {
    return { error: { code: this.code, message: this.message } };
  }
}

export function isOneportError(e: unknown): e is OneportError {
  return e instanceof OneportError;
}

/** Anything thrown, as a OneportError (unknown failures become INTERNAL, message hidden). */
export function toOneportError(e: unknown): OneportError {
  return isOneportError(e) ? e : new OneportError('ONEPORT_ERR_INTERNAL', undefined, { cause: e });
}

/** A failed schema check as ONEPORT_ERR_VALIDATION: one `field: problem` per issue (`body` for the whole input). */
export function validationError(e: z.ZodError): OneportError {
  return new OneportError(
    'ONEPORT_ERR_VALIDATION',
    e.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '),
  );
}
