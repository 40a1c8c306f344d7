/**
 * One load-generating process of bench/concurrency.ts: it opens idle tunnels when told to and
 * holds them, so that no process of the benchmark needs more descriptors than `ulimit -n` allows
 * (the orchestrator spreads the tunnels over several of these). A tunnel counts as open only once
 * the console's banner came back through it; a tunnel that closes while held counts as dropped.
 *
 * IPC, in:  {type:'open', tickets?: string[], count: number}  open `count` tunnels (CONNECT in TLS
 *           with one ticket each; TLS alone for HAProxy), answer {type:'opened', ok, errors, firstError}
 *           {type:'status'}   answer {type:'status', held, dropped, fds}
 *           {type:'close'}    destroy every tunnel, answer {type:'closed'}
 * out at start: {type:'ready', nofile}
 *
 * Started with BENCH_CONCURRENCY_CLIENT = JSON {port, vm?, tls, concurrency, resume}; exits when
 * the IPC channel closes.
 */
import { readdirSync } from 'node:fs';
import { type Conn, type Opener, type TlsClientOptions, connectOpener, expectBanner, tlsOpener } from './clients.js';
import { nofileLimit } from './procs.js';

export interface ClientChildOptions {
  readonly port: number;
  /** The VM to CONNECT to; absent: TLS straight to the console (HAProxy). */
  readonly vm?: string;
  readonly tls: TlsClientOptions;
  /** Tunnels being opened at once. */
  readonly concurrency: number;
  /** Offer the last TLS session (resumption) when opening the held tunnels. */
  readonly resume: boolean;
}

export type ClientChildIn = { type: 'open'; count: number; tickets?: string[] } | { type: 'status' } | { type: 'close' };
export type ClientChildOut =
  | { type: 'ready'; nofile: number }
  | { type: 'opened'; ok: number; resumed: number; errors: number; firstError: string | undefined; seconds: number }
  | { type: 'status'; held: number; dropped: number; fds: number }
  | { type: 'closed' };

const opts = JSON.parse(process.env.BENCH_CONCURRENCY_CLIENT ?? '{}') as ClientChildOptions;
const send = (m: ClientChildOut): void => void process.send?.(m);
const held = new Set<Conn>();
let dropped = 0;
let tickets: string[] = [];
const tlsOpts: TlsClientOptions = opts.resume ? { ...opts.tls, resume: {} } : opts.tls;
const open: Opener = opts.vm ? connectOpener(opts.port, opts.vm, () => tickets.pop() ?? 'none-left', tlsOpts) : tlsOpener(opts.port, tlsOpts);

let resumed = 0;

/** Open one tunnel up to the console's banner, then hold it; a later close counts as a drop. */
async function openOne(): Promise<void> {
  const c = await open();
  if (c.resumed) resumed++;
  try {
    await expectBanner(c);
  } catch (e) {
    c.destroy();
    throw e;
  }
  held.add(c);
  // Held tunnels are idle: nothing more is read, so the end of the read queue is the close.
  c.read(1, 2 ** 31 - 1).then(
    () => undefined,
    () => {
      if (held.delete(c)) dropped++;
    },
  );
}

async function openMany(count: number): Promise<ClientChildOut> {
  const t0 = process.hrtime.bigint();
  resumed = 0;
  let next = 0;
  let ok = 0;
  let errors = 0;
  let firstError: string | undefined;
  const loop = async (): Promise<void> => {
    while (next < count) {
      next++;
      try {
        await openOne();
        ok++;
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, count) }, loop));
  return { type: 'opened', ok, resumed, errors, firstError, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

process.on('message', (m: ClientChildIn) => {
  if (m.type === 'open') {
    tickets = m.tickets ? [...m.tickets] : [];
    void openMany(m.count).then(send);
  } else if (m.type === 'status') {
    send({ type: 'status', held: held.size, dropped, fds: readdirSync('/proc/self/fd').length });
  } else if (m.type === 'close') {
    for (const c of held) c.destroy();
    held.clear();
    send({ type: 'closed' });
  }
});
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
send({ type: 'ready', nofile: nofileLimit() });
