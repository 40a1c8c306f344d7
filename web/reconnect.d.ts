// Types for reconnect.js (plain JavaScript served to browsers; checked by the unit tests).
export type ReconnectState = 'idle' | 'connecting' | 'connected' | 'waiting' | 'stopped';
export interface ReconnectOptions {
  readonly baseMs: number;
  readonly capMs: number;
  readonly maxAttempts: number;
  readonly stableMs: number;
}
export interface ReconnectStatus {
  state: ReconnectState;
  attempt: number;
  maxAttempts: number;
  /** The attempts follow a loss (not the first connection, not the user's start()). */
  reconnecting: boolean;
  delayMs?: number;
  reason?: string;
}
export interface AttemptInfo {
  attempt: number;
  reconnecting: boolean;
}
export interface ReconnectEnv {
  now?: () => number;
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}
export declare const DEFAULTS: Readonly<ReconnectOptions>;
export declare function backoffDelay(attempt: number, opts?: ReconnectOptions, random?: () => number): number;
export declare class Reconnector {
  constructor(connect: (a: AttemptInfo) => void, onStatus: (s: ReconnectStatus) => void, opts?: Partial<ReconnectOptions>, env?: ReconnectEnv);
  readonly state: ReconnectState;
  readonly attempts: number;
  readonly reconnecting: boolean;
  start(): void;
  retryNow(): void;
  connected(): void;
  lost(info?: { fatal?: boolean; reason?: string; retryMs?: number }): void;
  stop(reason?: string): void;
}
export declare const RESUME_MARGIN_MS: number;
export declare class ResumeToken {
  constructor(env?: { now?: () => number; marginMs?: number });
  readonly token: string | undefined;
  readonly expiresAt: number;
  remember(answer: { resume?: unknown; resumeExpiresAt?: unknown; [field: string]: unknown } | null | undefined): void;
  forget(): void;
  usable(): boolean;
  path(vm: string, protocol: string): string | undefined;
  refused(code: number | undefined): boolean;
}
