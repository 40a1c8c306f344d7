/**
 * Messages between bench/run.ts and the processes it forks (gateway-child.ts, backend-child.ts),
 * over Node's IPC channel. Every request carries an id; the answer repeats it.
 */

/** The console stand-in speaks first, like an RFB server: 12 bytes. */
export const BANNER = Buffer.from('RFB 003.008\n', 'latin1');
/** After the banner the client picks a mode with one byte. */
export const MODE_ECHO = 0x45; // 'E': echo everything that follows
export const MODE_SINK = 0x53; // 'S' + uint64 BE byte count: count bytes, answer DONE once reached
export const MODE_SOURCE = 0x52; // 'R' + uint64 BE byte count: the backend sends that many bytes
export const DONE = 0x44; // 'D'

export interface BackendReady {
  readonly type: 'ready';
  readonly port: number;
}

export interface GatewayChildOptions {
  readonly backendPort: number;
  readonly certFile: string;
  readonly keyFile: string;
  readonly state: string;
  readonly logFile: string;
}

/** What the gateway process holds right now (bench/soak.ts watches it stay flat). */
export interface GatewayProbe {
  /** Resident set and V8 heap in use, bytes; the heap after a full collection when the child runs with --expose-gc. */
  readonly rss: number;
  readonly heapUsed: number;
  /** Open file descriptors (/proc/self/fd). */
  readonly fds: number;
  /** process.getActiveResourcesInfo() counted by kind: Timeout, TCPSocketWrap, ... */
  readonly resources: Readonly<Record<string, number>>;
  /** Live tunnels and open connections, as the gateway counts them. */
  readonly tunnels: number;
  readonly connections: number;
}

export interface GatewayReady {
  readonly type: 'ready';
  readonly port: number;
  readonly vm: string;
  /** Whether `ws` in the gateway finds the native `bufferutil` (else it unmasks in JavaScript). */
  readonly wsBufferutil: boolean;
}

export type GatewayRequest =
  | { readonly type: 'tickets'; readonly id: number; readonly count: number; readonly protocol?: 'vnc' | 'rdp' }
  | { readonly type: 'probe'; readonly id: number }
  | { readonly type: 'metrics'; readonly id: number }
  | { readonly type: 'stop'; readonly id: number };

export type GatewayReply =
  | { readonly type: 'tickets'; readonly id: number; readonly tickets: string[] }
  | { readonly type: 'metrics'; readonly id: number; readonly text: string }
  | ({ readonly type: 'probe'; readonly id: number } & GatewayProbe)
  | { readonly type: 'stopped'; readonly id: number }
  | { readonly type: 'error'; readonly id: number; readonly message: string };
