/**
 * Leaf types of a tunnel: what a client asks for, how it proved who it is, and what it was
 * granted. Every entrance (CONNECT, WebSocket, native RDP, and the RDP entrances to come) turns its transport
 * into a `TunnelRequest`; the broker (broker.ts) does the rest.
 */
import type { Endpoint, UserRecord, VmRecord } from '../directory/directory.js';
import type { EndpointHints } from '../routing.js';

export type Credential =
  | { readonly kind: 'ticket'; readonly ticket: string; readonly user?: string | undefined }
  | { readonly kind: 'password'; readonly user: string; readonly password: string }
  /** The portal's session cookie (WebSocket). */
  | { readonly kind: 'session'; readonly token: string }
  /**
   * A resume token (CONTRACT section 6). `user`: a user name the client also claimed (Basic
   * credentials); `cookie`: the browser's session cookie, which, when still valid, must be the
   * token's user (an expired one does not spoil a valid token: the token is the credential).
   */
  | { readonly kind: 'resume'; readonly token: string; readonly user?: string | undefined; readonly cookie?: string | undefined }
  /** Another node authenticated the client and vouches for it (cluster hop, node certificate). */
  | { readonly kind: 'node'; readonly node: string; readonly user: string };

/**
 * How the client leg is carried; it labels metrics and the tunnel log line. `rdp`: native RDP on
 * the port; `rdcleanpath`: RDP in the browser; `rdg-ws` and `rdg-http`: an RD Gateway client
 * (MS-TSGU) over a WebSocket or the legacy pair of requests.
 */
export type Transport = 'connect' | 'connect-tls' | 'websocket' | 'rdcleanpath' | 'rdp' | 'rdg-ws' | 'rdg-http' | 'hop';

export interface TunnelRequest {
  readonly vmName: string;
  readonly credential: Credential;
  readonly hints: EndpointHints;
  readonly tls: boolean;
  readonly client: string;
  /** Hold the client while the VM changes hands (the CONNECT and WebSocket entrances do). */
  readonly hold: boolean;
}

export interface TunnelTarget {
  readonly vm: VmRecord;
  readonly endpoint: Endpoint;
  readonly user: UserRecord;
  readonly sessionId: string;
  /**
   * The earliest the console session can have begun, when it began before this request: a resume
   * token's issue time (its ticket's). The maximum session time counts from here.
   */
  readonly sessionSince?: number | undefined;
  /** How the client proved who it is (for the log line); 'hop' = another node vouched for it. */
  readonly via: 'ticket' | 'password' | 'session' | 'resume' | 'hop';
  /** The API session (portal login) the credential came from, if any: its logout ends the tunnel. */
  readonly apiSession?: string | undefined;
  /** Called once the tunnel has ended or failed to open: a ticket's connection count (auth store). */
  readonly release?: (() => void) | undefined;
}
