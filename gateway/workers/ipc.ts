/**
 * Calls between the primary and its workers (README "Workers") over the IPC channel node:cluster
 * opens for each worker: `call` (answered, with a deadline) and `note` (not answered). A handle
 * (an accepted socket) can ride along with a note. Errors cross as their ONEPORT_ERR code,
 * message and Retry-After; anything else becomes ONEPORT_ERR_INTERNAL on the caller's side.
 *
 * Messages carry the key `oneportW`, so node:cluster's own messages (cmd NODE_*) and prom-client's
 * never reach a handler here, nor ours theirs.
 */
import type net from 'node:net';
import { OneportError, isOneportError, type ErrorCode } from '../errors.js';

/** The two ends: `process` in a worker, a cluster Worker in the primary. */
export interface Channel {
  send(message: unknown, handle?: net.Socket | net.Server, opts?: { keepOpen?: boolean }, cb?: (err: Error | null) => void): boolean;
  on(event: 'message', fn: (message: unknown, handle?: unknown) => void): unknown;
  removeListener(event: 'message', fn: (message: unknown, handle?: unknown) => void): unknown;
  isConnected?(): boolean;
  readonly connected?: boolean;
}

type Wire =
  | { oneportW: 'call'; id: number; m: string; a: unknown }
  | { oneportW: 'reply'; id: number; v?: unknown; e?: { code: string; message: string; retryAfter?: number } }
  | { oneportW: 'note'; m: string; a: unknown }
  | { oneportW: 'batch'; list: Wire[] };

/** Most messages one batch carries (a bound on one IPC line, however busy the tick). */
const MAX_BATCH = 256;

export type CallHandler = (args: unknown) => unknown;
export type NoteHandler = (args: unknown, handle: unknown) => void;

/** How long a call waits for its answer: the other side is a process on this machine. */
export const CALL_TIMEOUT_MS = 10_000;

export class Rpc {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly calls = new Map<string, CallHandler>();
  private readonly notes = new Map<string, NoteHandler>();
  private readonly onMessage = (msg: unknown, handle?: unknown): void => this.receive(msg, handle);
  /** Messages of this tick, sent together at its end (one write and one parse instead of one per message). */
  private queue: { msg: Wire; cb: ((err: Error | null) => void) | undefined }[] = [];
  private flushing: NodeJS.Immediate | undefined;

  constructor(private readonly channel: Channel) {
    channel.on('message', this.onMessage);
  }

  /** Answer calls to `method` (a thrown error or a rejection goes back as the caller's error). */
  handle(method: string, fn: CallHandler): this {
    this.calls.set(method, fn);
    return this;
  }

  on(method: string, fn: NoteHandler): this {
    this.notes.set(method, fn);
    return this;
  }

  call<T>(method: string, args: unknown = null, timeoutMs = CALL_TIMEOUT_MS): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new OneportError('ONEPORT_ERR_INTERNAL', `${method}: no answer from the ${process.send ? 'primary' : 'worker'} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.send({ oneportW: 'call', id, m: method, a: args }, undefined, (err) => {
        if (!err) return;
        const p = this.pending.get(id);
        if (!p) return;
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.reject(new OneportError('ONEPORT_ERR_INTERNAL', `${method}: ${err.message}`, { cause: err }));
      });
    });
  }

  /** Fire and forget; `cb` hears whether the message (and handle) went out. */
  note(method: string, args: unknown = null, handle?: net.Socket | net.Server, cb?: (err: Error | null) => void): void {
    this.send({ oneportW: 'note', m: method, a: args }, handle, cb);
  }

  /** Calls still waiting fail now (the other side is gone). */
  close(): void {
    this.flush();
    this.channel.removeListener('message', this.onMessage);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new OneportError('ONEPORT_ERR_INTERNAL', 'the other process is gone'));
      this.pending.delete(id);
    }
  }

  /**
   * Messages wait for the end of the tick and go as one batch; a message with a handle goes at
   * once, after what waits (the order between messages is kept either way).
   */
  private send(msg: Wire, handle: net.Socket | net.Server | undefined, cb?: (err: Error | null) => void): void {
    if (handle !== undefined) {
      this.flush();
      this.write(msg, handle, cb);
      return;
    }
    this.queue.push({ msg, cb });
    if (this.queue.length >= MAX_BATCH) this.flush();
    else this.flushing ??= setImmediate(() => this.flush());
  }

  private flush(): void {
    if (this.flushing !== undefined) clearImmediate(this.flushing);
    this.flushing = undefined;
    const items = this.queue;
    if (items.length === 0) return;
    this.queue = [];
    if (items.length === 1) {
      this.write(items[0]!.msg, undefined, items[0]!.cb);
      return;
    }
    this.write({ oneportW: 'batch', list: items.map((i) => i.msg) }, undefined, (err) => {
      for (const i of items) i.cb?.(err);
    });
  }

  private write(msg: Wire, handle: net.Socket | net.Server | undefined, cb: ((err: Error | null) => void) | undefined): void {
    const connected = this.channel.isConnected ? this.channel.isConnected() : this.channel.connected !== false;
    if (!connected) {
      cb?.(new Error('channel closed'));
      return;
    }
    try {
      this.channel.send(msg, handle, {}, cb ?? (() => undefined));
    } catch (e) {
      cb?.(e as Error);
    }
  }

  private receive(raw: unknown, handle: unknown): void {
    const msg = raw as Wire | null;
    if (typeof msg !== 'object' || msg === null || typeof (msg as { oneportW?: unknown }).oneportW !== 'string') return;
    if (msg.oneportW === 'batch') {
      if (!Array.isArray(msg.list)) return;
      for (const m of msg.list) if ((m as { oneportW?: unknown }).oneportW !== 'batch') this.receive(m, undefined);
      return;
    }
    if (msg.oneportW === 'reply') {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.e) p.reject(new OneportError(msg.e.code as ErrorCode, msg.e.message, msg.e.retryAfter !== undefined ? { retryAfter: msg.e.retryAfter } : {}));
      else p.resolve(msg.v);
      return;
    }
    if (msg.oneportW === 'note') {
      this.notes.get(msg.m)?.(msg.a, handle);
      return;
    }
    if (msg.oneportW === 'call') {
      const fn = this.calls.get(msg.m);
      const reply = (r: { v?: unknown; e?: { code: string; message: string; retryAfter?: number } }): void => this.send({ oneportW: 'reply', id: msg.id, ...r }, undefined);
      if (!fn) {
        reply({ e: { code: 'ONEPORT_ERR_INTERNAL', message: `no handler for ${msg.m}` } });
        return;
      }
      Promise.resolve()
        .then(() => fn(msg.a))
        .then(
          (v) => reply({ v: v === undefined ? null : v }),
          (e: unknown) =>
            reply({
              e: isOneportError(e)
                ? { code: e.code, message: e.message, ...(e.retryAfter !== undefined ? { retryAfter: e.retryAfter } : {}) }
                : { code: 'ONEPORT_ERR_INTERNAL', message: (e as Error)?.message ?? String(e) },
            }),
        );
    }
  }
}
