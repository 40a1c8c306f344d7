/**
 * Structured JSON logs (pino). Secrets never reach a log line: nothing on the data path logs a
 * ticket, token, password or URL query; the redact list is the second line of defence.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

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
];

export function createLogger(opts: { level: string; nodeId: string; destination?: DestinationStream }): Logger {
  return pino(
    {
      level: opts.level,
      base: { node: opts.nodeId },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    opts.destination ?? pino.destination({ sync: false }),
  );
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
