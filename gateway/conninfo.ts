/**
 * What we know about a client connection, attached to its socket (and to the TLS socket that
 * wraps it): the real client address (after a trusted PROXY header), whether it came over TLS,
 * and when it was accepted, for setup-time metrics.
 */
export interface ConnInfo {
  readonly id: number;
  /** The client's address: the socket's peer, or the source a trusted PROXY header gave. */
  remoteAddress: string;
  remotePort: number;
  tls: boolean;
  servername?: string | undefined;
  /** process.hrtime.bigint() at accept. */
  readonly acceptedAt: bigint;
}

const infos = new WeakMap<object, ConnInfo>();
let nextId = 1;

export function newConnInfo(remoteAddress: string, remotePort: number): ConnInfo {
  return { id: nextId++, remoteAddress: normaliseAddress(remoteAddress), remotePort, tls: false, acceptedAt: process.hrtime.bigint() };
}

export function setConnInfo(socket: object, info: ConnInfo): void {
  infos.set(socket, info);
}

export function connInfo(socket: object): ConnInfo | undefined {
  return infos.get(socket);
}

/** `::ffff:127.0.0.1` and `127.0.0.1` are one client. */
export function normaliseAddress(a: string): string {
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}
