/**
 * The audit trail (security issue, "Session controls"): one JSON line per console session when it
 * ends and one per admin change, appended to a file and, optionally, POSTed to a webhook.
 *
 * - Records never carry a password, hash, ticket or token: admin records name the fields that
 *   changed, not their values, for anything secret.
 * - The file (`audit.file`, default `<state>/audit.log`) is opened once, append-only, mode 0600,
 *   never through a symbolic link, and must be a regular file of ours (an existing one that others
 *   may read is tightened to 0600). Writes are asynchronous: a slow disk never holds a tunnel.
 * - The webhook (`audit.webhook`) gets JSON arrays of records (at most 100 a POST) from a bounded
 *   queue (`audit.webhookQueue`); failures are retried with jittered exponential backoff (500 ms
 *   doubling to 30 s) while the queue keeps filling; records that do not fit, that the receiver
 *   refuses (a 4xx other than 408/429) or that are still queued when the gateway stops are dropped
 *   and counted (`oneport_audit_dropped_total{reason}`). Nothing here ever waits on the network
 *   for a caller.
 */
import { closeSync, constants, fchmodSync, fstatSync, mkdirSync, openSync, type WriteStream, createWriteStream } from 'node:fs';
import { dirname } from 'node:path';
import { request } from 'undici';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';

/** One console session, written when it ends. */
export interface SessionAuditRecord {
  readonly kind: 'session';
  /** ISO time of the record (the end). */
  readonly time: string;
  readonly id: string;
  readonly user: string;
  readonly vm: string;
  readonly protocol: string;
  readonly transport: string;
  /** Client address (after a trusted PROXY header). */
  readonly client: string;
  /** How the client proved who it is: ticket, password, session, resume. */
  readonly via: string;
  readonly session: string;
  readonly entryNode: string;
  readonly consoleNode: string;
  readonly start: string;
  readonly end: string;
  readonly durationMs: number;
  readonly bytesToConsole: number;
  readonly bytesToClient: number;
  readonly closeReason: string;
}

/** One admin change. */
export interface AdminAuditRecord {
  readonly kind: 'admin';
  readonly time: string;
  /** The node that made the change. */
  readonly node: string;
  /** Who: the admin's user name, or `local-admin` (the control socket, i.e. the CLI on a node). */
  readonly actor: string;
  /** The control socket or the HTTP API; `forwardedBy` when another node passed the call on. */
  readonly via: 'control-socket' | 'api';
  readonly forwardedBy?: string;
  /** From where: the client address. */
  readonly client: string;
  /** What: e.g. `user.put`, `vm.delete`, `vm.move`, `keys.rotate`, `ticket.issue`, `session.terminate`. */
  readonly action: string;
  /** Which record. */
  readonly target: { readonly type: 'user' | 'vm' | 'keys' | 'session' | 'node'; readonly name: string };
  /** What changed, without secrets (field names, counts). */
  readonly details?: Readonly<Record<string, unknown>>;
}

export type AuditRecord = SessionAuditRecord | AdminAuditRecord;

export interface Audit {
  record(r: AuditRecord): void;
  /** Write what is queued (the webhook gets up to `deadlineMs`), then stop. Idempotent. */
  close(deadlineMs?: number): Promise<void>;
}

export interface AuditOptions {
  /** Append-only JSON lines file; undefined: none. */
  readonly file: string | undefined;
  readonly webhook?: { readonly url: string; readonly queue: number; readonly timeoutMs: number } | undefined;
  readonly metrics: Metrics;
  readonly log: Logger;
}

/** Open `file` for appending audit lines, safely (see the header); creates it 0600 if missing. */
export function openAuditFile(file: string): number {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const fd = openSync(file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`audit file ${file} is not a regular file`);
    if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new Error(`audit file ${file} belongs to another user`);
    if ((st.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
    return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** How long a session record may wait in memory before it is written (a crash loses at most this much). */
const SESSION_FLUSH_MS = 50;

export class AuditLog implements Audit {
  private readonly out: WriteStream | undefined;
  private readonly webhook: WebhookQueue | undefined;
  private closing: Promise<void> | undefined;
  /** Set while session records are held back (corked) to go out as one write. */
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: AuditOptions) {
    if (opts.file !== undefined) {
      const out = createWriteStream('', { fd: openAuditFile(opts.file), flags: 'a' });
      out.on('error', (err) => {
        opts.metrics.auditDropped.inc({ reason: 'file' });
        opts.log.error({ event: 'audit-file-error', err: err.message }, 'cannot write the audit file');
      });
      this.out = out;
    }
    if (opts.webhook) this.webhook = new WebhookQueue(opts.webhook, opts.metrics, opts.log);
  }

  record(r: AuditRecord): void {
    if (this.closing) {
      this.opts.metrics.auditDropped.inc({ reason: 'shutdown' });
      return;
    }
    this.opts.metrics.auditRecords.inc({ kind: r.kind });
    const out = this.out;
    if (out) {
      // A write per tunnel's record cost a thread-pool round trip each: half of the gateway's own
      // JavaScript time per tunnel setup in a profile (bench: 1,500 sequential setups). Session
      // records wait up to SESSION_FLUSH_MS and go out together; admin records (rare, and what an
      // operator watches) go out at once, with whatever waited before them, in order.
      if (r.kind === 'session' && this.flushTimer === undefined) {
        out.cork();
        this.flushTimer = setTimeout(() => this.flush(out), SESSION_FLUSH_MS).unref();
      }
      out.write(`${JSON.stringify(r)}\n`);
      if (r.kind !== 'session') this.flush(out);
    }
    this.webhook?.push(r);
  }

  /** Are session records held back, waiting for their write? */
  get holding(): boolean {
    return this.flushTimer !== undefined;
  }

  private flush(out: WriteStream): void {
    if (this.flushTimer === undefined) return;
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    out.uncork();
  }

  close(deadlineMs = 2000): Promise<void> {
    return (this.closing ??= (async () => {
      await this.webhook?.close(deadlineMs);
      const out = this.out;
      if (out) {
        this.flush(out);
        await new Promise<void>((resolve) => out.end(resolve));
      }
    })());
  }
}

const BATCH = 100;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;

/** The webhook's bounded queue and its one sender (one POST at a time, in order). */
class WebhookQueue {
  private readonly queue: AuditRecord[] = [];
  private sending: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private readonly host: string;

  constructor(
    private readonly opts: { readonly url: string; readonly queue: number; readonly timeoutMs: number },
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    // Only the host is ever logged: the URL may carry a secret in its path or query.
    this.host = new URL(opts.url).host;
  }

  push(r: AuditRecord): void {
    if (this.queue.length >= this.opts.queue) {
      this.metrics.auditDropped.inc({ reason: 'queue-full' });
      return;
    }
    this.queue.push(r);
    this.kick();
  }

  private kick(): void {
    if (this.sending || this.retryTimer || this.stopped || this.queue.length === 0) return;
    this.sending = this.sendBatch().then(() => {
      this.sending = undefined;
      this.kick();
    });
  }

  /** POST the head of the queue once; on a retryable failure, schedule the next try. */
  private async sendBatch(): Promise<'sent' | 'dropped' | 'retry'> {
    const batch = this.queue.slice(0, BATCH);
    let status: number | undefined;
    let reason: string | undefined;
    try {
      const res = await request(this.opts.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(batch),
        signal: AbortSignal.timeout(this.opts.timeoutMs),
      });
      await res.body.dump();
      status = res.statusCode;
    } catch (err) {
      reason = (err as Error).message;
    }
    if (status !== undefined && status >= 200 && status < 300) {
      this.queue.splice(0, batch.length);
      this.failures = 0;
      return 'sent';
    }
    if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
      // The receiver will never take these: drop them rather than block the queue forever.
      this.queue.splice(0, batch.length);
      this.metrics.auditDropped.inc({ reason: 'rejected' }, batch.length);
      this.log.warn({ event: 'audit-webhook-rejected', host: this.host, status, records: batch.length }, `audit webhook refused ${batch.length} record(s) (${status}); dropped`);
      return 'dropped';
    }
    this.failures++;
    const delay = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (this.failures - 1)) * (0.5 + Math.random() / 2);
    if (this.failures === 1 || this.failures % 10 === 0) {
      this.log.warn({ event: 'audit-webhook-failed', host: this.host, status: status ?? null, err: reason ?? null, failures: this.failures, queued: this.queue.length }, 'audit webhook did not take the records; retrying');
    }
    if (!this.stopped) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.kick();
      }, delay);
      this.retryTimer.unref();
    }
    return 'retry';
  }

  /** Try to deliver what is queued within `deadlineMs`; count the rest as dropped. */
  async close(deadlineMs: number): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const end = Date.now() + deadlineMs;
    await this.sending;
    while (this.queue.length > 0 && Date.now() < end) {
      if ((await this.sendBatch()) === 'retry') break;
    }
    if (this.queue.length > 0) this.metrics.auditDropped.inc({ reason: 'shutdown' }, this.queue.splice(0).length);
  }
}
