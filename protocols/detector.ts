/**
 * The one interface every protocol detector implements (the sslh / caddy-l4 shape).
 *
 * A detector is a pure function over the bytes a connection has sent so far. It never reads
 * from a socket, never consumes bytes and never throws: the listener owns the I/O, the deadline,
 * the byte cap and the replay of peeked bytes. The answer is three-way on purpose; squashing
 * "need more bytes" into "no" is how multiplexers misroute clients whose first segment is short.
 */

export type Detection<T = undefined> =
  | { readonly kind: 'match'; readonly info: T }
  | { readonly kind: 'no' }
  | { readonly kind: 'more' };

export interface Detector<T = undefined> {
  /** Short stable name, used in metrics labels and logs. */
  readonly name: string;
  /** Examine the first bytes of a connection. Must be pure and total over any input. */
  detect(head: Uint8Array): Detection<T>;
}

export const NO: Detection<never> = Object.freeze({ kind: 'no' });
export const MORE: Detection<never> = Object.freeze({ kind: 'more' });
export function match<T>(info: T): Detection<T> {
  return { kind: 'match', info };
}

/**
 * Compare `head` with a fixed prefix: 'match' when head starts with it, 'more' when head is a
 * proper prefix of it, 'no' otherwise.
 */
export function prefixState(head: Uint8Array, prefix: Uint8Array): 'match' | 'more' | 'no' {
  const n = Math.min(head.length, prefix.length);
  for (let i = 0; i < n; i++) if (head[i] !== prefix[i]) return 'no';
  return head.length >= prefix.length ? 'match' : 'more';
}
