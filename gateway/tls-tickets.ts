/**
 * TLS session resumption for clients: every secure context of the port encrypts its session
 * tickets (TLS 1.2 tickets and TLS 1.3 PSK tickets) with one key, replaced every `rotateMs`. A
 * client that comes back within the ticket's lifetime resumes (no certificate signature, no
 * certificate sent), which is most of what a full handshake costs the server.
 *
 * Rotation needs no timer: the key is checked when a handshake asks for a context. Node keeps one
 * ticket key per context, so tickets made before a rotation fall back to a full handshake.
 */
import { randomBytes } from 'node:crypto';
import type tls from 'node:tls';

/** How long one ticket key encrypts new tickets. */
export const TICKET_KEY_ROTATE_MS = 60 * 60_000;
/** Ticket lifetime hint given to clients (Node's default is 300 s). */
export const TLS_SESSION_TIMEOUT_S = 600;

/** Node's SecureContext handle (`tls.Server#setTicketKeys` calls the same). */
interface NativeContext {
  setTicketKeys(keys: Buffer): void;
}

export class TicketKeys {
  private readonly contexts: tls.SecureContext[] = [];
  private key: Buffer;
  private rotateAt: number;

  /**
   * @param key a key made elsewhere (workers: the primary's, so a session resumes on any
   * worker); with it, `rotateMs` is usually Infinity and `replace` brings the next key.
   */
  constructor(
    private readonly rotateMs = TICKET_KEY_ROTATE_MS,
    private readonly now: () => number = Date.now,
    key: Buffer = newTicketKey(),
  ) {
    this.key = key;
    this.rotateAt = now() + rotateMs;
  }

  /** Every context encrypts new tickets with `key` from now on. */
  replace(key: Buffer): void {
    this.key = key;
    for (const c of this.contexts) (c.context as NativeContext).setTicketKeys(this.key);
  }

  /** The key every context gets; pass it as `ticketKeys` to `tls.createSecureContext`. */
  get current(): Buffer {
    return this.key;
  }

  /** Rotate with the others from now on. */
  add<T extends tls.SecureContext>(context: T): T {
    (context.context as NativeContext).setTicketKeys(this.key);
    this.contexts.push(context);
    return context;
  }

  /** Cheap when not due: one comparison per handshake. */
  check(): void {
    const now = this.now();
    if (now < this.rotateAt) return;
    this.rotateAt = now + this.rotateMs;
    this.replace(newTicketKey());
  }
}

/** 48 random bytes: the ticket key name, HMAC key and AES key Node takes together. */
export function newTicketKey(): Buffer {
  return randomBytes(48);
}
