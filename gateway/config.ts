/**
 * Configuration: one schema, defaults with units in one place, validated once at start-up, then
 * frozen. Sources, later ones winning: defaults < config file (JSON) < environment < CLI flags.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, homedir, hostname } from 'node:os';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { z } from 'zod';
import { V2_DEFAULT_MAX, V2_HARD_MAX, V2_MIN_MAX } from '../protocols/proxy.js';
import { parseHostPort } from './hostport.js';
import { MAX_TIMER_MS, maxSessionsSchema } from './directory/directory.js';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;

const ms = z.number().int().nonnegative();
const positive = z.number().int().positive();

/** "host:port", "[v6]:port" or ":port". */
const listenSchema = z.string().refine((s) => parseListen(s) !== undefined, {
  message: 'must be host:port, [ipv6]:port or :port, with a port from 0 to 65535',
});

const cidrSchema = z.string().refine((s) => parseCidr(s) !== undefined, { message: 'must be an IP address or CIDR' });

export const configSchema = z
  .object({
    /** Node id in the cluster and in logs. @default the host name */
    nodeId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/).default(hostname().split('.')[0] || 'node'),
    /**
     * Processes serving the one port (README "Workers"): a number, or "auto" for one per core
     * (os.availableParallelism()). 1 is one process, as before workers. @default "auto"
     */
    workers: z.union([z.literal('auto'), z.number().int().min(1).max(256)]).default('auto'),
    /** The one port. @default '0.0.0.0:8443' */
    listen: listenSchema.default('0.0.0.0:8443'),
    /** State folder: directory file, certificates. @default ~/.oneport */
    state: z.string().default(resolve(homedir(), '.oneport')),
    /** Names and addresses the self-made server certificate covers, and that count as our own origin. */
    serverNames: z.array(z.string().min(1)).min(1).default(['localhost', '127.0.0.1', '::1']),
    tls: z
      .object({
        /** PEM files to use instead of the self-made certificate; chosen by SNI when several. */
        certificates: z.array(z.object({ cert: z.string(), key: z.string() })).default([]),
        minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
        /** Client must finish the TLS handshake within this. @default 10 s */
        handshakeTimeoutMs: positive.default(10 * SECOND),
      })
      .prefault({}),
    detect: z
      .object({
        /** First bytes must identify the protocol within this. @default 10 s */
        timeoutMs: positive.default(10 * SECOND),
        /** ...and within this many bytes; at most 16 + 65535, the largest PROXY v2 header. @default 4 KiB */
        maxBytes: z.number().int().min(64).max(V2_HARD_MAX).default(4096),
      })
      .prefault({}),
    nativeRdp: z
      .object({
        /**
         * Native RDP on the one port, in clear text: a stock client's preconnection PDU or X.224
         * Connection Request, routed by the `<ticket>.<vm>` it carries (gateway/rdp/native.ts). A VM
         * record with `nativeRdp: false` refuses it for that VM. @default true
         */
        enabled: z.boolean().default(true),
        /**
         * After detection, the whole opening (preconnection PDU and Connection Request, at most
         * 1,301 bytes) must arrive within this, or the connection is closed. @default 10 s
         */
        openingTimeoutMs: positive.default(10 * SECOND),
      })
      .prefault({}),
    proxyProtocol: z
      .object({
        /** Addresses (or CIDRs) allowed to send a PROXY v1/v2 header, e.g. your load balancer. @default none */
        trusted: z.array(cidrSchema).default([]),
        /**
         * Largest PROXY v2 header accepted, TLVs included (cloud balancers add their own); from
         * 232 (16 + the AF_UNIX address block) to 65551 (16 + the 16-bit length). A header must
         * also fit in detect.maxBytes. @default 4 KiB
         */
        maxV2HeaderBytes: z.number().int().min(V2_MIN_MAX).max(V2_HARD_MAX).default(V2_DEFAULT_MAX),
      })
      .prefault({}),
    http: z
      .object({
        /** Complete request headers within this. @default 10 s */
        headersTimeoutMs: positive.default(10 * SECOND),
        /** Complete request (with body) within this. @default 30 s */
        requestTimeoutMs: positive.default(30 * SECOND),
        /** Idle keep-alive connections are closed after this. @default 5 s */
        keepAliveTimeoutMs: positive.default(5 * SECOND),
        /** Total size of the request line and headers. @default 8 KiB */
        maxHeaderBytes: z.number().int().min(1024).max(65536).default(8192),
        /** Number of request headers. @default 64 */
        maxHeaders: z.number().int().min(8).max(1000).default(64),
        /** JSON API request body. @default 64 KiB */
        maxBodyBytes: positive.default(64 * 1024),
        /** Extra origins (scheme://host[:port]) allowed to open WebSockets, besides our own. */
        allowedOrigins: z.array(z.string().url()).default([]),
      })
      .prefault({}),
    limits: z
      .object({
        /**
         * Open connections on the port, all clients together; beyond it, new ones are dropped. Above
         * 80% of it, an address holding its fair share (this / (addresses connected + 1)) is
         * refused at accept, so the last slots stay free for others (admission.ts). @default 20000
         */
        maxConnections: positive.default(20000),
        /**
         * Open connections from one client address (an IPv6 client by its /64; after a trusted
         * PROXY header, the client it names); beyond it, new ones are closed at accept, before TLS
         * or HTTP (no 429). Trusted PROXY balancers are not held to it. A parked oneport.v1
         * session counts as a connection of the address whose leg dropped. @default 256
         */
        maxConnectionsPerAddress: positive.default(256),
        /** Largest WebSocket message a client may send (noVNC sends small input events). @default 256 KiB */
        wsMaxPayloadBytes: z.number().int().min(1024).default(256 * 1024),
        /** Client-to-console bytes queued while the console connection is being set up. @default 1 MiB */
        preConnectBufferBytes: positive.default(1024 * 1024),
        /**
         * Failed logins per minute for one user from one client address (IPv6: one /64). Keyed on
         * user and address so that guesses from elsewhere never lock out a client that knows the
         * password. @default 10
         */
        loginsPerUserPerMinute: positive.default(10),
        /** Failed logins per minute from one client address (IPv6: one /64), all users together. @default 30 */
        loginsPerAddressPerMinute: positive.default(30),
        /**
         * Password checks (scrypt: about 32 MiB and tens of ms each) running at once for one client
         * address (IPv6: one /64); beyond it, 429 at once. A SPICE client giving a password opens
         * several channels together. @default 8
         */
        concurrentHashesPerAddress: positive.default(8),
        /** Password checks running at once, all clients together; beyond it, 429 at once. @default 16 */
        concurrentHashes: positive.default(16),
        /** Failed tunnel authentications per client address (IPv6: one /64) per minute. @default 30 */
        authFailuresPerAddressPerMinute: positive.default(30),
        /** Cluster join calls (POST /api/cluster/join) per client address (IPv6: per /64) per minute. @default 10 */
        joinsPerAddressPerMinute: positive.default(10),
        /**
         * Console tickets one user may ask for per minute in API sessions (portal, tickets call,
         * console.vv); beyond it, 429. Admin and CLI tickets are not counted. @default 60
         */
        ticketsPerUserPerMinute: positive.default(60),
        /**
         * Console sessions one user may have open at once, cluster-wide (a SPICE client's channels
         * and reconnects with the resume token are one session); beyond, 429 / 4429
         * ONEPORT_ERR_SESSION_LIMIT. The user record's maxSessions overrides it; 0 = unlimited. @default 0
         */
        maxSessionsPerUser: maxSessionsSchema.default(0),
        /** Console sessions open on one VM at once, cluster-wide; the VM record's maxSessions overrides it; 0 = unlimited. @default 0 */
        maxSessionsPerVm: maxSessionsSchema.default(0),
      })
      .prefault({}),
    tunnel: z
      .object({
        /** The console must accept the TCP connection within this. @default 5 s */
        dialTimeoutMs: positive.default(5 * SECOND),
        /**
         * The console handshake (console-handshake.ts) must be done within this: the console's
         * banner and the gateway's own login with a stored console password before the client is
         * answered, then the client's opening bytes. @default 10 s
         */
        handshakeTimeoutMs: positive.default(10 * SECOND),
        /**
         * Check a tunnel's first bytes against the VM's declared protocol (RFB banner from a VNC
         * console, REDQ from a SPICE client, TPKT from an RDP client); a VM's `protocolCheck`
         * overrides it. @default true
         */
        protocolCheck: z.boolean().default(true),
        /** A tunnel with no bytes either way for this long is closed; 0 disables. A VM's policy overrides it. @default 1 h */
        idleTimeoutMs: ms.default(HOUR),
        /**
         * Stream tunnels (CONNECT, native RDP, hops): after one side's FIN, the other direction
         * may stay open this long, then both are closed; 0 = no bound. Long enough for a console
         * to flush what it still had to say over a slow link (RDP, VNC and SPICE clients do not
         * half-close on purpose; xrdp holds a half-closed client ~15 s), short enough that a
         * one-way stream left behind does not hold a session slot until the idle timeout, which a
         * busy direction never reaches. @default 2 min
         */
        halfCloseMs: ms.max(MAX_TIMER_MS).default(2 * MINUTE),
        /**
         * A console session ends this long after it began (WebSocket close 4008; CONNECT closed),
         * parked time included; 0 = no limit. A VM's policy overrides it. At most about 24.8 days
         * (a timer's bound). @default 0
         */
        maxSessionMs: ms.max(MAX_TIMER_MS).default(0),
        /** WebSocket ping interval; a client that misses a pong is dropped. @default 30 s */
        wsPingIntervalMs: positive.default(30 * SECOND),
        /**
         * A client of a VM that is changing hands (recovering, migrating, owner silent) is held this
         * long waiting for it, then gets 503 / 4503; 0 refuses at once. @default 60 s
         */
        holdMs: ms.default(60 * SECOND),
        /** WebSocket clients told to reconnect after a reroute (close 4001) wait up to this, jittered. @default 500 ms */
        rerouteRetryMs: ms.default(500),
        /** Resumable WebSocket tunnels (subprotocol oneport.v1): what survives a dropped client leg. */
        resume: z
          .object({
            /** The console stays open this long after the client leg drops. @default 30 s */
            graceMs: positive.default(30 * SECOND),
            /** Console bytes kept for replay; a parked session that needs more ends. @default 16 MiB */
            maxBufferBytes: z.number().int().min(64 * 1024).default(16 * 1024 * 1024),
            /**
             * Resumable sessions one user may hold on this node, live or parked. A new one beyond
             * it ends the user's oldest parked session, or, with none parked, is refused (1013
             * ONEPORT_ERR_RESUME_LIMIT). @default 16
             */
            maxSessionsPerUser: positive.default(16),
            /** Parked sessions one user may hold on this node; one more parking ends the user's oldest parked one. @default 8 */
            maxParkedPerUser: positive.default(8),
            /**
             * Parked sessions on this node, all users; one more parking ends the oldest parked
             * session of the user holding the most. @default 1024
             */
            maxParked: positive.default(1024),
            /**
             * Replay bytes on this node, all sessions. Over it, parked sessions end, the one with
             * the most bytes first; while still over, new resumable sessions are refused (1013
             * ONEPORT_ERR_RESUME_BUSY) and live ones keep at most 1 MiB unacknowledged (their
             * consoles wait for the clients' acks). At least maxBufferBytes. @default 256 MiB
             */
            maxBufferedBytes: z.number().int().min(64 * 1024).default(256 * 1024 * 1024),
          })
          .refine((r) => r.maxBufferedBytes >= r.maxBufferBytes, {
            message: 'maxBufferedBytes (all sessions) must be at least maxBufferBytes (one session)',
            path: ['maxBufferedBytes'],
          })
          .prefault({}),
      })
      .prefault({}),
    /** The RD Gateway entrance (MS-TSGU over HTTP: RDG_OUT_DATA / RDG_IN_DATA on the one port). */
    rdg: z
      .object({
        /**
         * From the first byte of an RDG request to the client's channel create: request heads, the
         * WebSocket upgrade or the legacy pair, handshake, tunnel create and authorize. @default 10 s
         */
        setupTimeoutMs: positive.default(10 * SECOND),
        /** The legacy pair: the other request (same RDG-Connection-Id) must arrive within this. @default 10 s */
        pairTimeoutMs: positive.default(10 * SECOND),
        /** Legacy requests waiting for their other half on this node; beyond, 503. @default 1024 */
        maxUnpaired: positive.default(1024),
      })
      .prefault({}),
    auth: z
      .object({
        /** Console ticket lifetime (CONTRACT: at most 60 s). @default 60 s */
        ticketTtlMs: z.number().int().min(1000).max(60 * SECOND).default(60 * SECOND),
        /**
         * After its first use a ticket is accepted again only from the same address, for the same
         * console session, within this window: a SPICE client's other channels (opened within a
         * second or two of the main one) and an RDP client's retries after security negotiation.
         * Never a new session later on. @default 10000 (10 seconds)
         */
        ticketReuseMs: z.number().int().min(0).max(60 * SECOND).default(10 * SECOND),
        /**
         * ... and only while one of the connections it opened is still open, or this long after the
         * last one ended (an RDP client's retry follows its refused attempt within milliseconds).
         * @default 2000 (2 seconds)
         */
        ticketReuseAfterCloseMs: z.number().int().min(0).max(60 * SECOND).default(2 * SECOND),
        /** Resume token lifetime (CONTRACT: at most 10 min). @default 10 min */
        resumeTtlMs: z.number().int().min(1000).max(10 * MINUTE).default(10 * MINUTE),
        /** API / portal session lifetime. @default 8 h */
        sessionTtlMs: positive.default(8 * HOUR),
      })
      .prefault({}),
    shutdown: z
      .object({
        /**
         * A drain (SIGTERM, `oneport node drain`) ends this long after it started at the latest:
         * tunnels still open then are closed. @default 30 s
         */
        drainMs: ms.default(30 * SECOND),
        /**
         * Between going unready (/readyz 503) and sending clients elsewhere: set it to what your
         * balancer needs to notice (check interval x failures), so reconnects do not land here. @default 0
         */
        unreadyMs: ms.default(0),
        /** A SIGTERM drain also moves this node's VMs to their replicas / other up nodes (`node drain --move-vms`). @default false */
        moveVms: z.boolean().default(false),
      })
      .prefault({}),
    demo: z
      .object({
        /**
         * Run the built-in test-pattern desktop as VM "demo" with a "demo" user. Off unless asked
         * for: `npm start` asks (`serve --demo`) for the first-run experience; a production node
         * never serves a demo desktop and user by accident. @default false
         */
        enabled: z.boolean().default(false),
      })
      .prefault({}),
    cluster: z
      .object({
        /**
         * Redis holding the shared directory: a redis:// or rediss:// URL, or Sentinel. Unset: a
         * single node with the embedded directory. @default none
         */
        redis: z
          .union([
            z.string().regex(/^rediss?:\/\//, { message: 'a redis:// or rediss:// URL' }),
            z
              .object({
                sentinels: z.array(z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) })).min(1),
                /** The Sentinel master group. */
                name: z.string().min(1),
                username: z.string().optional(),
                password: z.string().optional(),
                sentinelPassword: z.string().optional(),
                /** ACL user on the sentinels (Redis 6+), when they require one. */
                sentinelUsername: z.string().optional(),
                db: z.number().int().nonnegative().optional(),
                /** TLS to Redis (and to the sentinels). @default false */
                tls: z.boolean().default(false),
              })
              .strict(),
          ])
          .optional(),
        /** PEM file of the CA that signed Redis's TLS certificate (rediss://, or Sentinel with tls), when not in the system store. */
        redisCa: z.string().min(1).optional(),
        /** Prefix of every Redis key, so several clusters can share one Redis. @default 'oneport:{dir}:' */
        prefix: z.string().min(1).max(64).default('oneport:{dir}:'),
        /**
         * A file holding a one-time join token (`oneport cluster join-token <node>` on a node of the
         * cluster): a node without the cluster CA gets its certificates with it at first start
         * (env ONEPORT_JOIN_TOKEN works too; never on the command line, which others can read). @default none
         */
        joinTokenFile: z.string().min(1).optional(),
        /** host:port where the other nodes reach this node's one port. @default the bound address (0.0.0.0 becomes the first server name) */
        advertise: listenSchema.optional(),
        /** Leader lease in Redis; a dead leader is replaced within about this. @default 1200 ms */
        leaseMs: z.number().int().min(300).default(1200),
        /** The leader renews its lease this often (at most a third of leaseMs). @default 250 ms */
        renewMs: z.number().int().min(20).default(250),
        /** Followers try to take an expired lease this often. @default 150 ms */
        pollMs: z.number().int().min(20).default(150),
        /** Node heartbeat period. @default 500 ms */
        heartbeatMs: z.number().int().min(50).default(500),
        /** A node with no heartbeat for this long is suspected dead (then confirmed by others). @default 1500 ms */
        nodeTimeoutMs: z.number().int().min(150).default(1500),
        /**
         * How often the leader checks that its followers' Redis connections still exist (and each
         * follower the leader's): a node whose process died is judged at once (its port probed,
         * then failed over) instead of after nodeTimeoutMs. 0 turns it off. @default 250 ms
         */
        processWatchMs: z.number().int().min(0).default(250),
        /**
         * How a node reaches a console owned by another node: through the owner's one port
         * (mutual TLS, node certificates), or by dialling the console address itself.
         * @default 'via-owner'
         */
        consoleDial: z.enum(['via-owner', 'direct']).default('via-owner'),
        /** Most tunnels this node takes; advertised to the cluster. @default limits.maxConnections */
        capacity: positive.optional(),
        /**
         * Run on the new owner when a VM fails over to it (where a deployment starts the VM):
         * a command (argv; the VM name and epoch are appended, and set as ONEPORT_VM,
         * ONEPORT_EPOCH, ONEPORT_NODE) or an http(s) URL that gets a JSON POST. @default none
         */
        failoverHook: z
          .union([z.object({ command: z.array(z.string()).min(1) }).strict(), z.object({ url: z.string().url() }).strict()])
          .optional(),
        /** The hook must finish within this. @default 60 s */
        hookTimeoutMs: positive.default(60 * SECOND),
        /** The new owner checks a recovering VM's console this often until it answers. @default 500 ms */
        recoveryProbeMs: positive.default(500),
      })
      .strict()
      .refine((c) => c.renewMs * 3 <= c.leaseMs, { message: 'renewMs must be at most a third of leaseMs' })
      .refine((c) => c.heartbeatMs * 2 <= c.nodeTimeoutMs, { message: 'nodeTimeoutMs must be at least twice heartbeatMs' })
      .prefault({}),
    audit: z
      .object({
        /**
         * Append-only JSON lines file of sessions and admin changes (mode 0600); false: no file.
         * @default '<state>/audit.log'
         */
        file: z.union([z.string().min(1), z.literal(false)]).optional(),
        /** An http(s) URL that gets the same records as JSON arrays (POST), best effort. @default none */
        webhook: z
          .string()
          .url()
          .refine((u) => /^https?:\/\//.test(u), { message: 'an http:// or https:// URL' })
          .optional(),
        /** Records waiting for the webhook; beyond, new ones are dropped (and counted). @default 1000 */
        webhookQueue: positive.default(1000),
        /** One webhook POST must finish within this, else it is retried. @default 5 s */
        webhookTimeoutMs: positive.default(5 * SECOND),
      })
      .strict()
      .prefault({}),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        /** `json` lines, `pretty` (pino-pretty: human-readable, coloured on a terminal), or `auto`: pretty when stdout is a terminal. @default auto */
        format: z.enum(['auto', 'json', 'pretty']).default('auto'),
      })
      .prefault({}),
  })
  .strict();

export type ConfigInput = z.input<typeof configSchema>;
export type Config = DeepReadonly<z.output<typeof configSchema>>;

type DeepReadonly<T> = T extends (infer U)[]
  ? ReadonlyArray<DeepReadonly<U>>
  : T extends object
    ? { readonly [K in keyof T]: DeepReadonly<T[K]> }
    : T;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Validate, apply defaults, freeze. Throws ConfigError with one line per bad field. */
export function buildConfig(input: unknown): Config {
  const result = configSchema.safeParse(input ?? {});
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`),
    );
  }
  const cfg = result.data;
  cfg.state = resolve(cfg.state);
  return deepFreeze(cfg) as Config;
}

export interface LoadOptions {
  configFile?: string | undefined;
  overrides?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
}

/** Defaults < config file < ONEPORT_* environment < explicit overrides (CLI flags). */
export function loadConfig(opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  let fromFile: Record<string, unknown> = {};
  const file = opts.configFile ?? env.ONEPORT_CONFIG;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError([`cannot read config file ${file}: ${(e as Error).message}`]);
    }
    try {
      fromFile = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new ConfigError([`config file ${file} is not valid JSON: ${(e as Error).message}`]);
    }
  }
  const fromEnv: Record<string, unknown> = {};
  if (env.ONEPORT_STATE) fromEnv.state = env.ONEPORT_STATE;
  if (env.ONEPORT_LISTEN) fromEnv.listen = env.ONEPORT_LISTEN;
  if (env.ONEPORT_NODE_ID) fromEnv.nodeId = env.ONEPORT_NODE_ID;
  if (env.ONEPORT_WORKERS) fromEnv.workers = parseWorkers(env.ONEPORT_WORKERS);
  if (env.ONEPORT_REDIS) fromEnv.cluster = { ...(fromFile.cluster as object), redis: env.ONEPORT_REDIS };
  if (env.ONEPORT_LOG_LEVEL) fromEnv.log = { ...(fromFile.log as object), level: env.ONEPORT_LOG_LEVEL };
  if (env.ONEPORT_LOG_FORMAT) fromEnv.log = { ...(fromFile.log as object), ...(fromEnv.log as object), format: env.ONEPORT_LOG_FORMAT };
  const merged = { ...fromFile, ...fromEnv };
  for (const [k, v] of Object.entries(opts.overrides ?? {})) {
    // A flag for one log setting keeps the others from the file and environment.
    if (k === 'log' && v !== undefined) merged.log = { ...(merged.log as object), ...(v as object) };
    else if (v !== undefined) merged[k] = v;
  }
  return buildConfig(merged);
}

/** An address to listen on: port 0 lets the system pick, an empty host (`:port`) is every IPv4 address. */
export function parseListen(s: string): { host: string; port: number } | undefined {
  const parsed = parseHostPort(s, { portZero: true, emptyHost: true });
  if (!parsed) return undefined;
  return { host: parsed.host || '0.0.0.0', port: parsed.port };
}

export function parseCidr(s: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address = '', prefixText] = s.split('/');
  const v = isIP(address);
  if (v === 0) return undefined;
  const max = v === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || (prefixText !== undefined && !/^\d+$/.test(prefixText))) return undefined;
  return { address, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o as object)) deepFreeze(v);
  }
  return o;
}

/** `workers` as written on a command line or in the environment: "auto" or a number (anything else is left for the schema to refuse). */
export function parseWorkers(text: string): unknown {
  return /^\d{1,4}$/.test(text) ? Number(text) : text;
}

/** How many worker processes `serve` runs (config `workers`; "auto": one per core). */
export function workerCount(config: Pick<Config, 'workers'>): number {
  return config.workers === 'auto' ? availableParallelism() : config.workers;
}
