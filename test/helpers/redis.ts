/**
 * A real `redis-server` per test (Debian's /usr/bin/redis-server) on a free loopback port, with
 * nothing saved to disk, plus a TCP proxy that can hang or cut connections on demand (the
 * fault-injecting peer for partitions). Never port 6379: a machine may run its own Redis there.
 *
 * Readiness is an event (the server's "Ready to accept connections" line, then a PING answered),
 * never a sleep.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './net.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export const REDIS_SERVER = process.env.ONEPORT_REDIS_SERVER ?? '/usr/bin/redis-server';

export interface RedisServer {
  readonly port: number;
  /** redis://127.0.0.1:port */
  readonly url: string;
  /** The running process id, undefined while stopped. */
  readonly pid: number | undefined;
  /** SIGTERM (SHUTDOWN, nothing saved) and wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL and wait for the exit: no goodbye on the sockets beyond the kernel's. */
  kill(): Promise<void>;
  /** Start again on the same port (empty: nothing was saved). */
  restart(): Promise<void>;
  /** The TLS port, when started with `tls`. */
  readonly tlsPort?: number | undefined;
}

export interface StartRedisOptions {
  /** Extra `--name value` arguments for redis-server. */
  readonly args?: readonly string[];
  /** How long to wait for the server to answer. @default 10000 ms */
  readonly startTimeoutMs?: number;
  /**
   * Log lines to see before the server counts as started, after "Ready to accept connections"
   * (e.g. a replica's "MASTER <-> REPLICA sync: Finished with success").
   */
  readonly waitForLines?: readonly string[];
  /** Also listen with TLS (these PEM files) on a second free port: `tlsPort` in the result. */
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca: string };
}

export async function startRedis(t: Teardown, opts: StartRedisOptions = {}): Promise<RedisServer> {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-redis-'));
  const timeoutMs = opts.startTimeoutMs ?? 10_000;
  let child: ChildProcess | undefined;
  let port = 0;
  let tlsPort = 0;

  const launch = async (): Promise<void> => {
    const tlsArgs = opts.tls
      ? ['--tls-port', String(tlsPort), '--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, '--tls-ca-cert-file', opts.tls.ca, '--tls-auth-clients', 'no']
      : [];
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', '--logfile', '', '--loglevel', 'notice', ...tlsArgs, ...(opts.args ?? [])];
    const proc = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`redis-server on port ${port} not ready within ${timeoutMs} ms:\n${log}`)), timeoutMs);
      const onData = (d: Buffer): void => {
        log += d.toString('utf8');
        if (['Ready to accept connections', ...(opts.waitForLines ?? [])].every((line) => log.includes(line))) {
          cleanup();
          resolve();
        }
      };
      const onExit = (code: number | null, signal: string | null): void => fail(new Error(`redis-server exited (${code ?? signal}) before it was ready:\n${log}`));
      const onError = (err: Error): void => fail(err);
      const fail = (err: Error): void => {
        cleanup();
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        reject(err);
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        proc.stdout.removeListener('data', onData);
        proc.removeListener('exit', onExit);
        proc.removeListener('error', onError);
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', (d: Buffer) => (log += d.toString('utf8')));
      proc.once('exit', onExit);
      proc.once('error', onError);
    });
    // Keep draining its output so a chatty server never blocks on a full pipe.
    proc.stdout.resume();
    proc.stderr.resume();
    child = proc;
    await ping(port, timeoutMs);
  };

  // The free port may be taken between our probe and redis-server's bind: try a few.
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    if (opts.tls) do tlsPort = await freePort(); while (tlsPort === port);
    try {
      await launch();
      break;
    } catch (err) {
      if (attempt >= 5) throw err;
    }
  }

  const signalAndWait = async (signal: NodeJS.Signals): Promise<void> => {
    const proc = child;
    if (!proc) return;
    child = undefined;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    proc.kill(signal);
    await exited;
  };

  const server: RedisServer = {
    port,
    tlsPort: opts.tls ? tlsPort : undefined,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return child?.pid;
    },
    stop: () => signalAndWait('SIGTERM'),
    kill: () => signalAndWait('SIGKILL'),
    restart: async () => {
      await signalAndWait('SIGTERM');
      await launch();
    },
  };
  t.teardown(async () => {
    await signalAndWait('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  return server;
}

export interface SentinelServer {
  readonly port: number;
  /** ioredis options for a client of the monitored master. */
  readonly clientOptions: { sentinels: Array<{ host: string; port: number }>; name: string };
  kill(): Promise<void>;
}

/**
 * A `redis-server --sentinel` monitoring one master (quorum 1), started once it has seen the
 * master and `replicas` replicas (its "+slave" log lines): only then can it fail over.
 */
export async function startSentinel(t: Teardown, opts: { masterPort: number; replicas: number; name?: string; downAfterMs?: number; failoverTimeoutMs?: number }): Promise<SentinelServer> {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-sentinel-'));
  const name = opts.name ?? 'oneport';
  const port = await freePort();
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(
    conf,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${opts.masterPort} 1`,
      `sentinel down-after-milliseconds ${name} ${opts.downAfterMs ?? 500}`,
      `sentinel failover-timeout ${name} ${opts.failoverTimeoutMs ?? 5000}`,
      '',
    ].join('\n'),
  );
  const proc = spawn(REDIS_SERVER, [conf, '--sentinel'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`sentinel not ready within 15000 ms:\n${log}`)), 15_000);
    const onData = (d: Buffer): void => {
      log += d.toString('utf8');
      if (log.includes('+monitor master') && (log.match(/\+slave slave/g) ?? []).length >= opts.replicas) {
        cleanup();
        resolve();
      }
    };
    const onExit = (code: number | null): void => fail(new Error(`sentinel exited (${code}):\n${log}`));
    const fail = (err: Error): void => {
      cleanup();
      proc.kill('SIGKILL');
      reject(err);
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      proc.stdout.removeListener('data', onData);
      proc.removeListener('exit', onExit);
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', (d: Buffer) => (log += d.toString('utf8')));
    proc.once('exit', onExit);
  });
  proc.stdout.resume();
  proc.stderr.resume();
  const kill = async (): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    proc.kill('SIGKILL');
    await exited;
  };
  t.teardown(async () => {
    await kill();
    rmSync(dir, { recursive: true, force: true });
  });
  return { port, clientOptions: { sentinels: [{ host: '127.0.0.1', port }], name }, kill };
}

/** Resolves once a PING on a fresh connection is answered with PONG. */
async function ping(port: number, timeoutMs: number): Promise<void> {
  const s = net.connect({ port, host: '127.0.0.1' });
  s.setTimeout(timeoutMs);
  try {
    await new Promise<void>((resolve, reject) => {
      let got = '';
      s.once('error', reject);
      s.once('timeout', () => reject(new Error(`no PONG from 127.0.0.1:${port} within ${timeoutMs} ms`)));
      s.once('close', () => reject(new Error(`127.0.0.1:${port} closed before PONG; got ${JSON.stringify(got)}`)));
      s.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('+PONG\r\n')) resolve();
      });
      s.write('*1\r\n$4\r\nPING\r\n');
    });
  } finally {
    s.destroy();
  }
}

/** A plain ioredis client for a test's own direct commands (XADD behind the directory's back...). */
export function redisClient(t: Teardown, url: string): Redis {
  const r = new Redis(url, { protocol: 2, maxRetriesPerRequest: 1, disconnectTimeout: 200 });
  r.on('error', () => {});
  t.teardown(() => r.disconnect());
  return r;
}

/**
 * A TCP proxy on loopback in front of a server: `hang()` stops forwarding in both directions on
 * every connection (a partition: no FIN, no RST; bytes are held, not lost), `heal()` delivers what
 * was held and forwards again, `cut()` resets every open connection.
 */
export interface FaultProxy {
  readonly port: number;
  readonly url: string;
  /** Connections accepted so far. */
  readonly accepted: number;
  hang(): void;
  heal(): void;
  cut(): void;
  close(): Promise<void>;
}

export async function startFaultProxy(t: Teardown, targetPort: number): Promise<FaultProxy> {
  let hung = false;
  let accepted = 0;
  const pairs = new Set<{ a: net.Socket; b: net.Socket; held: Array<[net.Socket, Buffer]> }>();
  const server = net.createServer((a) => {
    accepted++;
    a.on('error', () => {});
    const b = net.connect({ port: targetPort, host: '127.0.0.1' });
    b.on('error', () => {});
    const pair = { a, b, held: [] as Array<[net.Socket, Buffer]> };
    pairs.add(pair);
    const forward = (to: net.Socket) => (d: Buffer) => {
      if (hung) pair.held.push([to, d]);
      else to.write(d);
    };
    a.on('data', forward(b));
    b.on('data', forward(a));
    const end = (): void => {
      pairs.delete(pair);
      a.destroy();
      b.destroy();
    };
    a.once('close', end);
    b.once('close', end);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const proxy: FaultProxy = {
    port,
    url: `redis://127.0.0.1:${port}`,
    get accepted() {
      return accepted;
    },
    hang: () => {
      hung = true;
    },
    heal: () => {
      hung = false;
      for (const p of pairs) {
        for (const [to, d] of p.held.splice(0)) to.write(d);
      }
    },
    cut: () => {
      for (const p of pairs) {
        p.a.resetAndDestroy();
        p.b.resetAndDestroy();
      }
    },
    close: async () => {
      for (const p of pairs) {
        p.a.destroy();
        p.b.destroy();
      }
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  t.teardown(() => proxy.close());
  return proxy;
}

/**
 * The next `event` from `emitter` whose argument satisfies `pred`; rejects after `timeoutMs` with
 * what was awaited (a guard against a hung test, not a way to wait for time to pass).
 */
export function nextEvent<T = unknown>(emitter: NodeJS.EventEmitter, event: string, pred: (arg: T) => boolean = () => true, timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`no matching '${event}' event within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (arg: T): void => {
      if (!pred(arg)) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(arg);
    };
    emitter.on(event, on);
  });
}
