/**
 * Structured logs (pino): JSON lines, or human-readable ones on a terminal (pino-pretty). Secrets
 * never reach a log line: nothing on the data path logs a ticket, token, password or URL query;
 * the redact list is the second line of defence, applied before either form is written.
 */
import { createRequire } from 'node:module';
import { pino, type Logger, type DestinationStream } from 'pino';
import type { build as buildPretty } from 'pino-pretty';

export type { Logger };

export const REDACT_PATHS = [
  'password',
  'ticket',
  'token',
  'resume',
  '*.password',
  '*.ticket',
  '*.token',
  '*.resume',
  // Console passwords ride in VM records (endpoints[].password): a record logged whole.
  'endpoints[*].password',
  '*.endpoints[*].password',
  'endpoint.password',
  '*.endpoint.password',
  'headers.authorization',
  'headers["proxy-authorization"]',
  'headers.cookie',
  '*.headers.authorization',
  '*.headers["proxy-authorization"]',
  '*.headers.cookie',
];

export type LogFormat = 'auto' | 'json' | 'pretty';

/**
 * JSON lines, or (`pretty`, or `auto` on a terminal) pino-pretty's human-readable lines. Either
 * way pino redacts first: the pretty printer only ever sees the redacted line.
 */
export function createLogger(opts: { level: string; nodeId: string; destination?: DestinationStream; format?: LogFormat }): Logger {
  const format = opts.format ?? 'auto';
  const pretty = format === 'pretty' || (format === 'auto' && opts.destination === undefined && process.stdout.isTTY === true);
  const stream = pretty ? prettyStream(opts.destination, format === 'pretty') : undefined;
  return pino(
    {
      level: opts.level,
      base: { node: opts.nodeId },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    stream ?? opts.destination ?? pino.destination({ sync: false }),
  );
}

/**
 * pino-pretty as a stream in this thread (a terminal's pace), writing to `destination` or stdout.
 * Not installed: an error when asked for by name, JSON lines for `auto`.
 */
function prettyStream(destination: DestinationStream | undefined, required: boolean): DestinationStream | undefined {
  let build: typeof buildPretty;
  try {
    // CommonJS, loaded only when asked for: JSON logging never depends on it.
    build = (createRequire(import.meta.url)('pino-pretty') as { build: typeof buildPretty }).build;
  } catch (e) {
    if (required) throw new Error(`log.format pretty needs the pino-pretty package (npm install): ${(e as Error).message}`, { cause: e });
    return undefined;
  }
  return build({
    colorize: destination === undefined && process.stdout.isTTY === true,
    translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
    ignore: 'pid,hostname',
    ...(destination !== undefined ? { destination } : {}),
  });
}

/**
 * Lets through at most `perInterval` calls per interval for each key, then counts what it
 * dropped and reports that number with the next line let through. For logs an attacker can
 * trigger at will (garbage first bytes, failed auth).
 */
export class RateLimitedLog {
  private readonly windows = new Map<string, { start: number; used: number; dropped: number }>();

  constructor(
    private readonly perInterval = 10,
    private readonly intervalMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Returns the number of suppressed lines to report, or -1 if this line must be dropped. */
  take(key: string): number {
    const t = this.now();
    let w = this.windows.get(key);
    if (!w || t - w.start >= this.intervalMs) {
      const dropped = w?.dropped ?? 0;
      w = { start: t, used: 0, dropped: 0 };
      this.windows.set(key, w);
      w.used = 1;
      return dropped;
    }
    if (w.used < this.perInterval) {
      w.used++;
      return 0;
    }
    w.dropped++;
    return -1;
  }
}
