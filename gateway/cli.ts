#!/usr/bin/env node
/**
 * The `oneport` command: serve, init, user, vm, ticket, session, cluster.
 * Flags override the config file, which overrides defaults (config.ts).
 */
import { createReadStream, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { Command, InvalidArgumentError, Option } from 'commander';
import cluster from 'node:cluster';
import { ConfigError, loadConfig, parseWorkers, workerCount, type Config } from './config.js';
import { createLogger, type Logger } from './log.js';
import { runPrimary } from './workers/primary.js';
import { runWorker } from './workers/worker.js';
import { startGateway } from './server.js';
import { ensureState } from './state.js';
import { MemoryDirectory } from './directory/memory.js';
import { openAdmin } from './admin.js';
import { randomPassword } from './auth/passwords.js';
import { PROTOCOLS, type EndpointInput, type Protocol } from './directory/directory.js';
import { parseHostPort, parsePort } from './hostport.js';
import { VERSION } from './version.js';
import { doctorStatus, formatFindings, runDoctor } from './doctor.js';

interface GlobalOpts {
  config?: string;
  state?: string;
  listen?: string;
  demo?: boolean;
  logLevel?: string;
  logFormat?: string;
  redis?: string;
  nodeId?: string;
  advertise?: string;
  joinTokenFile?: string;
  workers?: string;
}

const program = new Command();
program
  .name('oneport')
  .description('One TLS port for RDP, SPICE and VNC consoles: HTTP CONNECT, WebSocket, API and portal.')
  .version(VERSION)
  .option('-c, --config <file>', 'JSON config file (env ONEPORT_CONFIG)')
  .option('-s, --state <dir>', 'state folder: directory, secrets, certificates (env ONEPORT_STATE; default ~/.oneport)')
  .showHelpAfterError();

function config(extra: Partial<GlobalOpts> = {}): Config {
  const g = { ...program.opts<GlobalOpts>(), ...extra };
  const overrides: Record<string, unknown> = { state: g.state, listen: g.listen };
  if (g.demo !== undefined) overrides.demo = { enabled: g.demo };
  if (g.logLevel || g.logFormat) overrides.log = { ...(g.logLevel ? { level: g.logLevel } : {}), ...(g.logFormat ? { format: g.logFormat } : {}) };
  if (g.nodeId) overrides.nodeId = g.nodeId;
  if (g.workers !== undefined) overrides.workers = parseWorkers(g.workers);
  if (g.redis !== undefined || g.advertise !== undefined || g.joinTokenFile !== undefined) {
    const file = loadConfig({ configFile: g.config, overrides: { state: g.state } });
    overrides.cluster = {
      ...file.cluster,
      ...(g.redis !== undefined ? { redis: g.redis } : {}),
      ...(g.advertise !== undefined ? { advertise: g.advertise } : {}),
      ...(g.joinTokenFile !== undefined ? { joinTokenFile: g.joinTokenFile } : {}),
    };
  }
  return loadConfig({ configFile: g.config, overrides });
}

program
  .command('serve')
  .description('run the gateway')
  .option('-l, --listen <host:port>', 'address of the one port (default 0.0.0.0:8443)')
  .option('-w, --workers <n|auto>', 'processes serving the port: auto (one per core, the default) or a number; 1 is a single process (env ONEPORT_WORKERS)')
  .option('--demo', 'also serve the built-in demo desktop (VM "demo", user "demo"); `npm start` does')
  .option('--no-demo', 'do not serve the demo desktop, even if the config file asks for it')
  .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
  .addOption(new Option('--log-format <format>', 'json lines, pretty (human-readable), or auto: pretty on a terminal (env ONEPORT_LOG_FORMAT)').choices(['auto', 'json', 'pretty']))
  .option('--redis <url>', 'join the cluster whose directory is in this Redis (redis:// or rediss://; env ONEPORT_REDIS)')
  .option('--node-id <id>', 'this node\'s id in the cluster (env ONEPORT_NODE_ID; default the host name)')
  .option('--advertise <host:port>', 'where the other nodes reach this node\'s port (default: the bound address)')
  .option('--join-token-file <file>', 'join the cluster with the one-time token in this file (`oneport cluster join-token`; env ONEPORT_JOIN_TOKEN)')
  .action(async (opts: GlobalOpts) => {
    const cfg = config(opts);
    // A worker of a node with workers (workers/worker.ts): its primary started it with this command line.
    if (cluster.isWorker) {
      await runWorker(cfg);
      return;
    }
    // Read once and dropped from the environment, so no child (a failover hook) inherits it.
    const joinToken = process.env.ONEPORT_JOIN_TOKEN;
    delete process.env.ONEPORT_JOIN_TOKEN;
    // A same-host restart's successor: the listening socket comes as a descriptor (restartServe).
    const inherited = process.env.ONEPORT_LISTEN_FD;
    delete process.env.ONEPORT_LISTEN_FD;
    const listenFd = inherited !== undefined && /^\d{1,4}$/.test(inherited) ? Number(inherited) : undefined;
    const onBound = (): void => void process.send?.({ oneport: 'bound' }, () => process.disconnect?.());
    // From the start on: a SIGTERM during a long start (a big directory to load) drains the node once it runs.
    const onStop = stopSignals();
    const workers = workerCount(cfg);
    if (workers > 1) {
      await servePrimary(cfg, workers, listenFd, listenFd !== undefined ? onBound : undefined, joinToken, onStop);
      return;
    }
    const gw = await startGateway(cfg, {
      ...(joinToken ? { joinToken } : {}),
      ...(listenFd !== undefined ? { listenFd, onBound } : {}),
    });
    // Last resort: a bug that escapes every handler is logged and counted; the process keeps
    // serving, because exiting would drop every tunnel on this node for one bad request.
    const lastResort = (where: string) => (e: unknown): void => {
      gw.ctx.metrics.internalErrors.inc({ where });
      gw.ctx.log.error({ err: e, event: 'last-resort', where }, `${where}: kept serving`);
    };
    process.on('unhandledRejection', lastResort('unhandledRejection'));
    process.on('uncaughtException', lastResort('uncaughtException'));
    process.stderr.write(`oneport ${VERSION} serving on ${gw.url}  (CA: ${cfg.state}/ca.pem)\n`);
    // However it stops (a signal, `oneport node drain`), the process ends with it.
    void gw.stopped.then(() => process.exit(0));
    // A drain: unready, clients sent elsewhere (and VMs moved with shutdown.moveVms), then stop.
    onStop((sig) => void gw.drain({ cause: sig }));
    process.on('SIGUSR2', () => void restartServe({ log: gw.ctx.log, listenFd: gw.listenFd, handOff: gw.handOff }));
  });

/** `serve` with workers: this process is the primary (workers/primary.ts). */
async function servePrimary(
  cfg: Config,
  workers: number,
  listenFd: number | undefined,
  onBound: (() => void) | undefined,
  joinToken: string | undefined,
  onStop: (drain: (cause: string) => void) => void,
): Promise<void> {
  const log = createLogger({ level: cfg.log.level, nodeId: cfg.nodeId, format: cfg.log.format }).child({ worker: 'primary' });
  const primary = await runPrimary(cfg, { workers, log, ...(listenFd !== undefined ? { listenFd } : {}), ...(onBound ? { onBound } : {}), ...(joinToken ? { joinToken } : {}) });
  process.on('unhandledRejection', (e) => log.error({ err: e, event: 'last-resort', where: 'unhandledRejection' }, 'unhandledRejection: kept serving'));
  process.on('uncaughtException', (e) => log.error({ err: e, event: 'last-resort', where: 'uncaughtException' }, 'uncaughtException: kept serving'));
  process.stderr.write(`oneport ${VERSION} serving on ${primary.url} with ${workers} workers  (CA: ${cfg.state}/ca.pem)\n`);
  void primary.stopped.then(() => process.exit(0));
  onStop((sig) => void primary.drain({ cause: sig }));
  process.on('SIGUSR2', () => void restartServe(primary));
}

/**
 * SIGTERM and SIGINT, listened to from the start of `serve`: once the node runs, the first one
 * drains it (`drain`, given when it runs; one that came during the start is answered then); a
 * second one exits at once.
 */
function stopSignals(): (drain: (cause: string) => void) => void {
  let signals = 0;
  let pending: string | undefined;
  let drain: ((cause: string) => void) | undefined;
  const stop = (sig: string): void => {
    if (++signals > 1) {
      process.stderr.write(`${sig} again: exiting now\n`);
      process.exit(1);
    }
    if (drain) drain(sig);
    else {
      pending = sig;
      process.stderr.write(`${sig}: the node drains and stops as soon as it has started (${sig} again to exit now)\n`);
    }
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return (fn) => {
    drain = fn;
    if (pending !== undefined) fn(pending);
  };
}

/** How long a successor gets to accept on the port before the restart is given up. */
const SUCCESSOR_START_MS = 60_000;
/** The successor's descriptor for the listening socket: after stdin, stdout, stderr and the IPC channel. */
const SUCCESSOR_LISTEN_FD = 4;
let restarting = false;

/**
 * Same-host restart without a refused connection (SIGUSR2): a successor is started from the same
 * command line (so the code on disk now), given the listening socket; once it accepts, this
 * process stops accepting, sends its clients to reconnect (they land on the successor) and
 * stops. A successor that fails to start changes nothing here.
 */
async function restartServe(gw: { readonly log: Logger; listenFd(): number | undefined; handOff(): Promise<void> }): Promise<void> {
  const log = gw.log;
  const fd = gw.listenFd();
  if (restarting || fd === undefined) {
    log.warn({ event: 'restart-refused', restarting }, restarting ? 'restart already under way' : 'restart: no listening socket to pass on');
    return;
  }
  restarting = true;
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    env: { ...process.env, ONEPORT_LISTEN_FD: String(SUCCESSOR_LISTEN_FD) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc', fd],
  });
  log.info({ event: 'restart-spawned', pid: child.pid }, `restart: successor ${child.pid} starting on the same port`);
  const bound = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), SUCCESSOR_START_MS);
    child.on('message', (m: unknown) => {
      if ((m as { oneport?: string } | null)?.oneport === 'bound') {
        clearTimeout(timer);
        resolve(true);
      }
    });
    child.once('error', () => resolve(false));
    child.once('exit', () => resolve(false));
  });
  if (!bound) {
    log.error({ event: 'restart-failed', pid: child.pid }, 'restart: the successor did not start accepting; this process keeps serving');
    child.kill('SIGKILL');
    restarting = false;
    return;
  }
  if (child.connected) child.disconnect();
  child.unref();
  await gw.handOff();
}

program
  .command('init')
  .description('create the state folder: directory file, cluster CA and server certificate')
  .action(async () => {
    const cfg = config();
    const state = ensureState(cfg.state, cfg.serverNames);
    const dir = new MemoryDirectory(state.paths.directory);
    await dir.flush();
    await dir.close();
    for (const what of state.created) console.log(`created ${what}`);
    console.log(`state folder ${cfg.state} is ready; clients trust ${state.paths.caCert}`);
  });

program
  .command('doctor')
  .description('check what breaks deployments: certificates, state folder, descriptor limit, Redis, clock, port; exits 1 on a failure')
  .option('--pid <pid>', 'check the descriptor limit of this process (the running service: systemctl show -p MainPID --value oneport)', (v) => {
    if (!/^\d{1,9}$/.test(v)) throw new InvalidArgumentError('a process id');
    return Number(v);
  })
  .option('--json', 'print the findings as JSON')
  .action(async (o: { pid?: number; json?: boolean }) => {
    const findings = await runDoctor(config(), { ...(o.pid !== undefined ? { pid: o.pid } : {}) });
    console.log(o.json ? JSON.stringify(findings, null, 2) : formatFindings(findings));
    process.exitCode = doctorStatus(findings);
  });

const user = program.command('user').description('manage users');
user
  .command('add <name>')
  .description('add a user, or change one (a new password logs the user out everywhere)')
  .option('-p, --password <password>', 'password (default: a random one, printed once); visible to other local users in the process list, prefer --password-stdin')
  .option('--password-stdin', 'read the password from the first line of standard input')
  .option('--admin', 'give the admin role')
  .option('-g, --groups <list>', 'comma-separated groups', csv)
  .action(async (name: string, o: { password?: string; passwordStdin?: boolean; admin?: boolean; groups?: string[] }) => {
    if (o.password !== undefined && o.passwordStdin) throw new InvalidArgumentError('give --password or --password-stdin, not both');
    const given = o.passwordStdin ? await readPasswordLine(process.stdin) : o.password;
    const admin = await openAdminFor(config());
    try {
      const password = given ?? randomPassword();
      await admin.putUser(name, { password, roles: o.admin ? ['user', 'admin'] : undefined, groups: o.groups });
      console.log(`user ${name} saved${given !== undefined ? '' : `; password: ${password}`}`);
    } finally {
      await admin.close();
    }
  });
user
  .command('set <name>')
  .description('change an existing user\'s limits (the password stays)')
  .requiredOption('--max-sessions <n|default>', 'console sessions open at once, cluster-wide (0 = unlimited; default = limits.maxSessionsPerUser)', maxSessionsArg)
  .action(async (name: string, o: { maxSessions: number | null }) => {
    const admin = await openAdmin(config().state);
    try {
      await admin.putUser(name, { maxSessions: o.maxSessions });
      console.log(`user ${name} saved`);
    } finally {
      await admin.close();
    }
  });
user
  .command('list')
  .description('list users')
  .action(async () => {
    const admin = await openAdminFor(config());
    try {
      console.table(await admin.listUsers());
    } finally {
      await admin.close();
    }
  });
user
  .command('remove <name>')
  .description('remove a user')
  .action(async (name: string) => {
    const admin = await openAdminFor(config());
    try {
      await admin.deleteUser(name);
      console.log(`user ${name} removed`);
    } finally {
      await admin.close();
    }
  });

const vm = program.command('vm').description('manage VMs');
const endpointOption = (p: Protocol): Option =>
  new Option(`--${p} <host:port[@published]>`, `${p} console address, and the port clients name in CONNECT`).argParser((v) => endpoint(p, v));
vm
  .command('add <name>')
  .description('add or replace a VM')
  .addOption(endpointOption('vnc'))
  .addOption(endpointOption('spice'))
  .addOption(endpointOption('rdp'))
  .option('-u, --users <list>', 'comma-separated users allowed on it', csv)
  .option('-g, --groups <list>', 'comma-separated groups allowed on it', csv)
  .option('-n, --node <id>', 'owning node (default: this node)')
  .option('-r, --replica <id>', 'node holding a replica of the VM: it takes over if the owner fails (cluster)')
  .option('--max-sessions <n>', 'console sessions open on it at once, cluster-wide (0 = unlimited; default limits.maxSessionsPerVm)', (v) => maxSessionsArg(v) ?? undefined)
  .option('--max-session <duration>', 'a console session ends this long after it began, e.g. 8h (0 = no limit; default tunnel.maxSessionMs)', duration)
  .option('--idle-timeout <duration>', 'a tunnel idle this long ends, e.g. 30m (0 = never; default tunnel.idleTimeoutMs)', duration)
  .option('--no-native-rdp', 'refuse native RDP clients (the ticket before TLS) for this VM; its RDP stays reachable through the RD Gateway, CONNECT and the browser')
  .option('--no-protocol-check', 'do not check that tunnels to it carry the declared protocol (default tunnel.protocolCheck)')
  .action(async (name: string, o: { vnc?: EndpointInput; spice?: EndpointInput; rdp?: EndpointInput; users?: string[]; groups?: string[]; node?: string; replica?: string; maxSessions?: number; maxSession?: number; idleTimeout?: number; nativeRdp?: boolean; protocolCheck?: boolean }) => {
    const cfg = config();
    const endpoints = [o.vnc, o.spice, o.rdp].filter((e): e is EndpointInput => e !== undefined);
    if (endpoints.length === 0) throw new InvalidArgumentError('give at least one of --vnc, --spice, --rdp');
    const policy = { ...(o.maxSession !== undefined ? { maxSessionMs: o.maxSession } : {}), ...(o.idleTimeout !== undefined ? { idleTimeoutMs: o.idleTimeout } : {}) };
    const admin = await openAdminFor(cfg);
    try {
      await admin.putVm({
        name,
        node: o.node ?? cfg.nodeId,
        ...(o.replica ? { replica: o.replica } : {}),
        endpoints,
        users: o.users ?? [],
        groups: o.groups ?? [],
        ...(Object.keys(policy).length > 0 ? { policy } : {}),
        ...(o.maxSessions !== undefined ? { maxSessions: o.maxSessions } : {}),
        ...(o.nativeRdp ? {} : { nativeRdp: false }),
        ...(o.protocolCheck === false ? { protocolCheck: false } : {}),
      });
      console.log(`vm ${name} saved`);
    } finally {
      await admin.close();
    }
  });
vm
  .command('password <name>')
  .description('set or clear the console password the gateway answers a VNC or SPICE console with (users never see it)')
  .addOption(new Option('-p, --protocol <protocol>', 'the endpoint: vnc or spice').choices(['vnc', 'spice']).makeOptionMandatory())
  .option('--password-file <file>', 'read the password from the first line of this file')
  .option('--password-stdin', 'read the password from the first line of standard input')
  .option('--clear', 'remove the endpoint\'s console password')
  .action(async (name: string, o: { protocol: 'vnc' | 'spice'; passwordFile?: string; passwordStdin?: boolean; clear?: boolean }) => {
    // Never on the command line: other local users can read a process's arguments.
    if ([o.passwordFile !== undefined, o.passwordStdin === true, o.clear === true].filter(Boolean).length !== 1) {
      throw new InvalidArgumentError('give exactly one of --password-file, --password-stdin, --clear');
    }
    const password = o.clear ? null : await readPasswordLine(o.passwordFile !== undefined ? createReadStream(o.passwordFile) : process.stdin);
    const admin = await openAdminFor(config());
    try {
      await admin.setConsolePassword(name, o.protocol, password);
      console.log(`vm ${name}: ${o.protocol} console password ${password === null ? 'cleared' : 'set'}`);
    } finally {
      await admin.close();
    }
  });
vm
  .command('move <name> <node>')
  .description('planned migration: <node> owns the VM from now on; routing follows at once')
  .action(async (name: string, node: string) => {
    const admin = await openAdminFor(config());
    try {
      const moved = await admin.moveVm(name, node);
      console.log(`vm ${name} now on ${moved.node} (epoch ${moved.epoch})`);
    } finally {
      await admin.close();
    }
  });
vm
  .command('list')
  .description('list VMs')
  .action(async () => {
    const admin = await openAdminFor(config());
    try {
      console.table(
        (await admin.listVms()).map((v) => ({
          name: v.name,
          node: v.node,
          state: v.state,
          endpoints: v.endpoints.map((e) => `${e.protocol} ${e.host}:${e.port} (published ${e.publishedPort}${e.passwordSet ? ', console password set' : ''})`).join('; '),
          users: v.users.join(','),
          groups: v.groups.join(','),
          'max sessions': v.maxSessions ?? '',
          'native rdp': v.endpoints.some((e) => e.protocol === 'rdp') ? (v.nativeRdp === false ? 'off' : 'on') : '',
          policy: v.policy ? JSON.stringify(v.policy) : '',
          'protocol check': v.protocolCheck === undefined ? '' : String(v.protocolCheck),
        })),
      );
    } finally {
      await admin.close();
    }
  });
vm
  .command('remove <name>')
  .description('remove a VM')
  .action(async (name: string) => {
    const admin = await openAdminFor(config());
    try {
      await admin.deleteVm(name);
      console.log(`vm ${name} removed`);
    } finally {
      await admin.close();
    }
  });

program
  .command('ticket <vm>')
  .description('issue a console ticket (needs the running gateway); prints JSON')
  .requiredOption('-u, --user <name>', 'the user the ticket is for')
  .addOption(new Option('-p, --protocol <protocol>', 'rdp, vnc or spice (default: the VM\'s first)').choices(PROTOCOLS))
  .action(async (vmName: string, o: { user: string; protocol?: string }) => {
    const admin = await openAdminFor(config());
    try {
      console.log(JSON.stringify(await admin.ticket(o.user, vmName, o.protocol), null, 2));
    } finally {
      await admin.close();
    }
  });

const nodeCmd = program.command('node').description('cluster nodes (needs the running gateway)');
nodeCmd
  .command('drain <id>')
  .description('drain node <id> (this one or any other of the cluster) for an upgrade: it goes unready, refuses new tunnels, sends its clients to other nodes, then stops once its tunnels are gone or shutdown.drainMs passed')
  .option('--move-vms', 'first move the VMs it owns to their replicas (or the least busy other up node), through the leader')
  .action(async (id: string, o: { moveVms?: boolean }) => {
    const admin = await openAdmin(config().state);
    try {
      const r = await admin.drainNode(id, o.moveVms ?? false);
      console.log(`node ${r.node} ${r.started ? 'is draining' : 'was already draining'}: ${r.tunnels} tunnel(s) to hand over${r.moveVms ? '; its VMs move first' : ''}`);
    } finally {
      await admin.close();
    }
  });

const sessionCmd = program.command('session').description('live console sessions, on every node (needs the running gateway)');
sessionCmd
  .command('list')
  .description('every live tunnel: user, VM, protocol, nodes, client, since, bytes each way')
  .option('--json', 'print the raw JSON of GET /api/sessions')
  .action(async (o: { json?: boolean }) => {
    const admin = await openAdmin(config().state);
    try {
      const list = await admin.sessions();
      if (o.json) {
        console.log(JSON.stringify(list, null, 2));
      } else if (list.sessions.length === 0) {
        console.log('no live sessions');
      } else {
        console.table(
          list.sessions.map((x) => ({
            id: x.id,
            user: x.user,
            vm: x.vm,
            protocol: x.protocol,
            transport: x.transport,
            entry: x.entryNode,
            console: x.consoleNode,
            client: x.client,
            since: x.since,
            'to console': x.bytesToConsole,
            'to client': x.bytesToClient,
            state: x.parked ? 'parked' : '',
          })),
        );
      }
      for (const n of list.nodes) if (!n.answered) process.stderr.write(`warning: node ${n.node} (${n.state}) did not answer: ${n.error ?? '?'}; its sessions are not listed\n`);
      if (!list.complete) process.exitCode = 2;
    } finally {
      await admin.close();
    }
  });
sessionCmd
  .command('kill [id]')
  .description('end a session (its tunnel and the rest of its console session), or all of a user\'s with --user')
  .option('-u, --user <name>', 'end every session of this user, on every node')
  .action(async (id: string | undefined, o: { user?: string }) => {
    if ((id === undefined) === (o.user === undefined)) throw new InvalidArgumentError('give a session id (see `oneport session list`) or --user <name>');
    const admin = await openAdmin(config().state);
    try {
      if (id !== undefined) {
        const r = await admin.killSession(id);
        console.log(`session ${id} ended (${r.ended} tunnel(s))`);
        return;
      }
      const r = await admin.killUserSessions(o.user!);
      console.log(`${r.ended} tunnel(s) of ${o.user} ended`);
      for (const n of r.nodes) if (!n.answered && (n.state === 'up' || n.state === 'suspect')) process.stderr.write(`warning: node ${n.node} did not answer: ${n.error ?? '?'}; ${o.user}'s sessions there may still be open\n`);
      if (!r.complete) process.exitCode = 2;
    } finally {
      await admin.close();
    }
  });

const clusterCmd = program.command('cluster').description('cluster information and operations');
clusterCmd
  .command('rotate-keys')
  .description('new ticket signing key; the previous one stays valid until the next rotation')
  .action(async () => {
    const admin = await openAdminFor(config());
    try {
      await admin.rotateKeys();
      console.log('ticket signing key rotated');
    } finally {
      await admin.close();
    }
  });
clusterCmd
  .command('join-token <node>')
  .description('a one-time token for a new node to join the cluster without copying the CA key (needs the running gateway)')
  .option('--ttl <seconds>', 'how long the token is valid (default 3600, at most 86400)', (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 86400) throw new InvalidArgumentError('--ttl: whole seconds from 1 to 86400');
    return n;
  })
  .option('--out <file>', 'write the token to this file (mode 0600) instead of printing it')
  .action(async (node: string, o: { ttl?: number; out?: string }) => {
    const admin = await openAdminFor(config());
    try {
      const t = await admin.joinToken(node, o.ttl);
      if (o.out) {
        writeFileSync(o.out, `${t.token}\n`, { mode: 0o600, flag: 'wx' });
        console.error(`join token for node ${t.node} written to ${o.out} (valid until ${t.expiresAt}, once)`);
      } else {
        console.log(t.token);
        console.error(`join token for node ${t.node}, valid until ${t.expiresAt}, once. On the new node: put it in a file and start it with --join-token-file <file> (or env ONEPORT_JOIN_TOKEN).`);
      }
    } finally {
      await admin.close();
    }
  });
clusterCmd
  .command('status')
  .description('leader, nodes and directory versions (needs the running gateway)')
  .option('--json', 'print the raw JSON of GET /api/cluster')
  .action(async (o: { json?: boolean }) => {
    const admin = await openAdminFor(config());
    try {
      const status = (await admin.cluster()) as {
        self: string;
        leader: { node: string; epoch: number } | null;
        directory: { kind: string; version: number; connected: boolean; ageMs: number };
        nodes: Array<{ id: string; address?: string; state: string; leader: boolean; version: string; tunnels?: number | null; heartbeatAgeMs?: number | null; mirror: { version: number; ageMs: number; connected: boolean } | null }>;
      };
      if (o.json) {
        console.log(JSON.stringify(status, null, 2));
        return;
      }
      console.log(status.leader ? `leader: ${status.leader.node} (epoch ${status.leader.epoch})` : 'leader: none (election under way)');
      console.log(`this node: ${status.self}; directory ${status.directory.kind} v${status.directory.version}${status.directory.connected ? '' : `, STALE for ${Math.round(status.directory.ageMs / 1000)} s`}`);
      console.table(
        status.nodes.map((n) => ({
          node: n.id,
          state: n.state,
          leader: n.leader ? 'yes' : '',
          address: n.address ?? '',
          version: n.version,
          tunnels: n.tunnels ?? '',
          'heartbeat age ms': n.heartbeatAgeMs ?? '',
          'mirror version': n.mirror?.version ?? '',
          'mirror age ms': n.mirror ? n.mirror.ageMs : '',
        })),
      );
    } finally {
      await admin.close();
    }
  });

/** Longest password the API takes (characters); a line of more is refused, not cut. */
const MAX_PASSWORD_LENGTH = 1024;

/** The first line of `input`, without its line ending; read no further than a password can be long. */
async function readPasswordLine(input: NodeJS.ReadableStream): Promise<string> {
  const limit = MAX_PASSWORD_LENGTH * 4; // bytes: up to 4 per character in UTF-8
  let buf = Buffer.alloc(0);
  let complete = false;
  for await (const chunk of input) {
    buf = Buffer.concat([buf, typeof chunk === 'string' ? Buffer.from(chunk) : chunk]);
    const nl = buf.indexOf(0x0a);
    if (nl >= 0) {
      buf = buf.subarray(0, nl);
      complete = true;
    }
    if (complete || buf.length > limit) break;
  }
  const line = buf.toString('utf8').replace(/\r$/, '');
  if (buf.length > limit || line.length > MAX_PASSWORD_LENGTH) throw new InvalidArgumentError(`--password-stdin: the password is longer than ${MAX_PASSWORD_LENGTH} characters`);
  if (line === '') throw new InvalidArgumentError('--password-stdin: no password on standard input');
  return line;
}

/** The admin for this state folder; a cluster node's directory can only be changed through a running node. */
function openAdminFor(cfg: Config): ReturnType<typeof openAdmin> {
  return openAdmin(cfg.state, { cluster: cfg.cluster.redis !== undefined });
}

/** `n` (0 = unlimited) or `default` (null: the configured default). */
function maxSessionsArg(v: string): number | null {
  if (v === 'default') return null;
  if (!/^\d{1,6}$/.test(v) || Number(v) > 100_000) throw new InvalidArgumentError('a whole number from 0 to 100000, or "default"');
  return Number(v);
}

/** `90s`, `30m`, `8h`, `2d`, `500ms` or plain milliseconds, to milliseconds. */
function duration(v: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError('a duration such as 90s, 30m, 8h, 2d (or milliseconds)');
  const units: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  const ms = Number(m[1]) * (units[m[2] ?? 'ms'] ?? 1);
  if (!Number.isSafeInteger(ms) || ms > 2 ** 31 - 1) throw new InvalidArgumentError('at most 24 days (a timer\'s bound)');
  return ms;
}

function csv(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** `host:port` or `host:port@published-port` (`[v6]:port` for IPv6). */
function endpoint(protocol: Protocol, v: string): EndpointInput {
  const at = v.lastIndexOf('@');
  const address = parseHostPort(at < 0 ? v : v.slice(0, at));
  const publishedPort = at < 0 ? undefined : parsePort(v.slice(at + 1));
  if (!address || (at >= 0 && publishedPort === undefined)) throw new InvalidArgumentError('expected host:port or host:port@published-port (ports 1-65535)');
  return { protocol, host: address.host, port: address.port, ...(publishedPort !== undefined ? { publishedPort } : {}) };
}

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof ConfigError) process.stderr.write(`oneport: ${e.message}\n`);
  else process.stderr.write(`oneport: ${(e as Error).message ?? String(e)}\n`);
  process.exit(1);
});
