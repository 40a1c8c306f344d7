/**
 * A client leg: the client's side of a tunnel, as its transport carries it. The broker decides
 * (authorize, hold, reach, register, log); a leg only speaks its transport: how to say "no", how
 * to say "yes" and relay bytes, and when its client has gone.
 */
import type { OneportError } from '../../errors.js';
import type { Pump, CloseReason } from '../pump.js';
import type { ReachedConsole } from '../reach.js';
import type { Transport, TunnelTarget } from '../request.js';

export interface AttachOptions {
  /** For a console reached through another node: tells its death from a console close (reach.ts). */
  readonly endJudge?: (() => Promise<CloseReason | undefined>) | undefined;
  /** This tunnel's idle timeout (0 = none): the broker's choice, from the VM's policy (policy.ts). */
  readonly idleTimeoutMs: number;
  /** Stream tunnels: how long one direction may stay open after the other's FIN (config tunnel.halfCloseMs; 0 = no bound). */
  readonly halfCloseMs?: number | undefined;
}

export interface ClientLeg {
  readonly transport: Transport;
  /** The client's address (the real one, after a trusted PROXY header). */
  readonly client: string;
  /** When the connection was accepted (process.hrtime.bigint()), for the setup time. */
  readonly acceptedAt: bigint;
  /** Aborted when the client leaves before the tunnel is attached: cancels holding and dialling. */
  readonly gone: AbortSignal;
  /** Extra fields for the refusal log line (e.g. which node sent a hop). */
  readonly logFields?: Readonly<Record<string, unknown>>;
  /**
   * The client is authorized for `target`, before its console is dialled: throws a OneportError
   * when a limit of the leg's own kind refuses it (a `oneport.v1` leg: the session caps), so a
   * refused client costs no console connection. The leg checks again at `attach`.
   */
  admit?(target: TunnelTarget): void;
  /**
   * The leg's own handshake with the console it reached, before `attach` (RDCleanPath: X.224 and
   * TLS with the RDP console). Resolves to the console to relay to; rejects with a OneportError
   * to refuse (the broker closes the console). Bounded in time by the leg.
   */
  handshake?(console: ReachedConsole, target: TunnelTarget): Promise<ReachedConsole>;
  /**
   * The console answered: answer the client and start relaying. Throws a OneportError when the
   * leg cannot take it (the client left meanwhile, it sent too much early data); the broker then
   * closes the console socket.
   */
  attach(console: ReachedConsole, target: TunnelTarget, opts: AttachOptions): Pump;
  /** Refused: answer in the transport's own words (status line, close code), then close. */
  refuse(err: OneportError): void;
}

/**
 * A leg that can only say no, in a plain HTTP answer: for refusals an entrance makes before its
 * transport exists (a WebSocket upgrade refused before the handshake), so they take the broker's
 * one refusal path too.
 */
export function answerOnlyLeg(transport: Transport, client: string, answer: (err: OneportError) => void): ClientLeg {
  return {
    transport,
    client,
    acceptedAt: process.hrtime.bigint(),
    gone: AbortSignal.abort(),
    attach() {
      throw new Error('a refusal-only leg cannot carry a tunnel');
    },
    refuse: answer,
  };
}
