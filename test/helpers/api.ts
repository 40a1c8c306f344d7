/**
 * The gateway's JSON API (CONTRACT section 5) from tests, over TLS with undici: one call
 * (`apiCall`), a client bound to one gateway (`apiClient`), and `ok` for callers that only go on
 * after a 200.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { Agent, type Dispatcher, request } from 'undici';

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** `any` by default: tests read answers' fields as they please. */
export interface ApiResponse<T = any> {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  /** Parsed JSON, or the text when the answer is not JSON. */
  readonly body: T;
}

export interface ApiCallOptions {
  /** Sent as JSON (Content-Type: application/json unless `headers` says otherwise); a string is sent as it is. */
  readonly body?: unknown;
  /** Authorization: Bearer. */
  readonly token?: string | undefined;
  readonly cookie?: string | undefined;
  readonly headers?: Record<string, string>;
  /** Abort the call after this long. @default none (the test's own timeout) */
  readonly timeoutMs?: number;
}

export async function apiCall<T = any>(dispatcher: Dispatcher, origin: string, method: string, path: string, opts: ApiCallOptions = {}): Promise<ApiResponse<T>> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.body !== undefined) headers['content-type'] ??= 'application/json';
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.cookie) headers.cookie = opts.cookie;
  const r = await request(`${origin}${path}`, {
    method: method as Dispatcher.HttpMethod,
    dispatcher,
    headers,
    body: opts.body === undefined ? null : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body),
    ...(opts.timeoutMs !== undefined ? { signal: AbortSignal.timeout(opts.timeoutMs) } : {}),
  });
  const text = await r.body.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text
  }
  return { status: r.statusCode, headers: r.headers, body: body as T };
}

export type ApiClient = <T = any>(method: string, path: string, opts?: ApiCallOptions) => Promise<ApiResponse<T>>;

/**
 * Calls to the gateway at `host`:`gw.port` (default `localhost`), trusting its CA, through one
 * agent closed at teardown.
 */
export function apiClient(t: Teardown, gw: { readonly port: number; readonly caCert: string }, host = 'localhost'): ApiClient {
  const dispatcher = new Agent({ connect: { ca: gw.caCert, servername: 'localhost' } });
  t.teardown(() => dispatcher.close());
  return (method, path, opts) => apiCall(dispatcher, `https://${host}:${gw.port}`, method, path, opts);
}

/** The body of a 200 answer; anything else throws with the status and body, naming `what`. */
export function ok<T>(r: ApiResponse<T>, what = 'API call'): T {
  if (r.status !== 200) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}
