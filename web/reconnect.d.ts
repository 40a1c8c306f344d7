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
  delayMs?: number;
  reason?: string;
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
  constructor(connect: () => void, onStatus: (s: ReconnectStatus) => void, opts?: Partial<ReconnectOptions>, env?: ReconnectEnv);
  readonly state: ReconnectState;
  readonly attempts: number;
  start(): void;
  retryNow(): void;
  connected(): void;
  lost(info?: { fatal?: boolean; reason?: string; retryMs?: number }): void;
  stop(reason?: string): void;
}
