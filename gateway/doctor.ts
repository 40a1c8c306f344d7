/**
 * `oneport doctor`: what breaks deployments, checked where the gateway will run, each finding
 * with a one-line fix. It reads and connects; it never changes the state folder or Redis.
 */
import net from 'node:net';
import tls from 'node:tls';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import type { Redis } from 'ioredis';
import { type Config, parseListen, workerCount } from './config.js';
import { statePaths } from './state.js';
import { certificateMatchesName } from '../certs/ca.js';
import { createConnection } from './directory/redis.js';
import { redisOptions } from './server.js';
import { formatHostPort } from './hostport.js';

export type Severity = 'ok' | 'warn' | 'fail';

export interface Finding {
  readonly check: 'state' | 'certificate' | 'descriptors' | 'redis' | 'sentinel' | 'clock' | 'port';
  readonly severity: Severity;
  readonly message: string;
  /** One line: what to do. Absent when severity is ok. */
  readonly fix?: string;
}

export interface DoctorOptions {
  /** Read the descriptor limit of this process (the running service) instead of our own. */
  readonly pid?: number;
  /** The local clock, compared with Redis TIME. @default Date.now */
  readonly now?: () => number;
  /** Per network check. @default 3000 ms */
  readonly timeoutMs?: number;
}

/** A certificate expiring sooner than this is a warning; an expired one a failure. */
const EXPIRY_WARN_MS = 21 * 24 * 3600 * 1000;
/** Clock skew against Redis TIME: tickets, sessions and heartbeats are judged by several clocks. */
const SKEW_WARN_MS = 250;
const SKEW_FAIL_MS = 1000;
/** Descriptors beyond the tunnels: listener, Redis, peers, files, the control socket. */
const DESCRIPTOR_MARGIN = 1024;

/**
 * Head room over an even share per worker: the primary gives each connection to the worker with
 * the fewest, so the spread stays small (bench:concurrency: 5,000 tunnels on each of 4 workers at 20,000).
 */
const WORKER_SHARE_HEADROOM = 1.25;

function servingProcesses(cfg: Config): number {
  return workerCount(cfg);
}

/**
 * The open-file limit one process needs for limits.maxConnections: each tunnel holds two
 * descriptors (client and console) in the process serving it, so with workers each needs about
 * its share (the limit is per process; the primary holds a connection only while passing it on).
 */
export function descriptorsNeeded(cfg: Config): number {
  const workers = workerCount(cfg);
  const tunnels = workers > 1 ? Math.ceil((cfg.limits.maxConnections / workers) * WORKER_SHARE_HEADROOM) : cfg.limits.maxConnections;
  return 2 * tunnels + DESCRIPTOR_MARGIN;
}

const ok = (check: Finding['check'], message: string): Finding => ({ check, severity: 'ok', message });
const bad = (check: Finding['check'], severity: 'warn' | 'fail', message: string, fix: string): Finding => ({ check, severity, message, fix });

export async function runDoctor(cfg: Config, opts: DoctorOptions = {}): Promise<Finding[]> {
  const findings: Finding[] = [...checkState(cfg), ...checkCertificates(cfg, opts.now ?? Date.now), checkDescriptors(cfg, opts.pid)];
  if (cfg.cluster.redis !== undefined) findings.push(...(await checkRedis(cfg, opts)));
  findings.push(...(await checkPort(cfg, opts.timeoutMs ?? 3000)));
  return findings;
}

/** Exit status: 1 when anything failed. */
export function doctorStatus(findings: readonly Finding[]): number {
  return findings.some((f) => f.severity === 'fail') ? 1 : 0;
}

/** `ok    message` / `FAIL  message` + `      fix: ...`, for a terminal. */
export function formatFindings(findings: readonly Finding[]): string {
  const label: Record<Severity, string> = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' };
  return findings.map((f) => `${label[f.severity]}  ${f.check}: ${f.message}${f.fix ? `\n      fix: ${f.fix}` : ''}`).join('\n');
}

// ---------------------------------------------------------------------------------------------

/** Files in the state folder that hold secrets: readable by the owner only. */
const SECRET_FILES = ['ca-key.pem', 'server-key.pem', 'node-key.pem', 'directory.json', 'directory.json.log', 'revoked-sessions.json', 'control.sock'];

function checkState(cfg: Config): Finding[] {
  const root = cfg.state;
  // The gateway makes it at its first start (mode 0700): only worth a warning before then.
  if (!existsSync(root)) return [bad('state', 'warn', `state folder ${root} does not exist yet`, `oneport init --state ${root} (as the user the service runs as), or start the gateway once`)];
  const st = statSync(root);
  if (!st.isDirectory()) return [bad('state', 'fail', `state folder ${root} is not a folder`, `point --state (ONEPORT_STATE) at a folder`)];
  const out: Finding[] = [];
  const uid = process.getuid?.();
  if (uid !== undefined && uid !== 0 && st.uid !== uid) {
    out.push(bad('state', 'fail', `state folder ${root} belongs to uid ${st.uid}, not to this user (uid ${uid}); the gateway refuses it`, `run as its owner (sudo -u '#${st.uid}' oneport ...), or chown -R ${uid} ${root}`));
  }
  if ((st.mode & 0o077) !== 0) {
    const sev = (st.mode & 0o022) !== 0 ? 'fail' : 'warn';
    out.push(bad('state', sev, `state folder ${root} has mode ${(st.mode & 0o777).toString(8)}: others can ${sev === 'fail' ? 'write' : 'list'} it${sev === 'fail' ? ' (the gateway refuses it)' : ''}`, `chmod 700 ${root}`));
  }
  for (const name of readdirSync(root)) {
    const f = statSync(join(root, name));
    // A file made by root (`sudo oneport user add`) that the service user cannot read or replace.
    if (f.uid !== st.uid) out.push(bad('state', 'fail', `${join(root, name)} belongs to uid ${f.uid}, the folder to uid ${st.uid}: the gateway may not read or replace it`, `chown ${st.uid} ${join(root, name)}`));
    if (SECRET_FILES.includes(name) && (f.mode & 0o077) !== 0) {
      out.push(bad('state', 'fail', `${join(root, name)} holds secrets and has mode ${(f.mode & 0o777).toString(8)}`, `chmod 600 ${join(root, name)}`));
    }
  }
  if (out.length === 0) out.push(ok('state', `state folder ${root}: mode ${(st.mode & 0o777).toString(8)}, owner uid ${st.uid}, secrets 0600`));
  return out;
}

function checkCertificates(cfg: Config, now: () => number): Finding[] {
  const configured = cfg.tls.certificates;
  const paths = statePaths(cfg.state);
  const pems: Array<{ where: string; cert: string; key: string | undefined; selfMade: boolean }> = [];
  for (const c of configured) {
    try {
      pems.push({ where: c.cert, cert: readFileSync(c.cert, 'utf8'), key: readFileSync(c.key, 'utf8'), selfMade: false });
    } catch (e) {
      return [bad('certificate', 'fail', `cannot read ${c.cert} or ${c.key}: ${(e as Error).message}`, 'fix the path in tls.certificates, or make the files readable by the service user')];
    }
  }
  if (configured.length === 0) {
    if (!existsSync(paths.serverCert)) return [ok('certificate', `no server certificate yet: the gateway makes one for ${cfg.serverNames.join(', ')} at its first start`)];
    pems.push({ where: paths.serverCert, cert: readFileSync(paths.serverCert, 'utf8'), key: undefined, selfMade: true });
  }
  const out: Finding[] = [];
  for (const p of pems) {
    let x: X509Certificate;
    try {
      x = new X509Certificate(p.cert);
    } catch (e) {
      out.push(bad('certificate', 'fail', `${p.where} is not a PEM certificate (${(e as Error).message})`, 'put the PEM certificate (chain) in that file'));
      continue;
    }
    const left = new Date(x.validTo).getTime() - now();
    const days = Math.floor(left / 86_400_000);
    // The self-made certificate is reissued at start when it nears expiry or the names change.
    const renew = p.selfMade ? 'restart the gateway: it reissues its self-made certificate' : `renew ${p.where} (and its key), then restart the gateway`;
    if (left <= 0) out.push(bad('certificate', 'fail', `${p.where} expired on ${x.validTo}`, renew));
    else if (left < EXPIRY_WARN_MS) out.push(bad('certificate', 'warn', `${p.where} expires in ${days} days (${x.validTo})`, renew));
    else out.push(ok('certificate', `${p.where} valid for ${days} more days`));
    if (p.key !== undefined) {
      try {
        if (!x.checkPrivateKey(createPrivateKey(p.key))) out.push(bad('certificate', 'fail', `${p.where} does not belong to its key`, 'give the key the certificate was issued for (tls.certificates[].key)'));
      } catch (e) {
        out.push(bad('certificate', 'fail', `the key for ${p.where} is unreadable (${(e as Error).message})`, 'give an unencrypted PEM private key'));
      }
    }
  }
  const uncovered = cfg.serverNames.filter((n) => !pems.some((p) => certificateMatchesName(p.cert, n)));
  if (uncovered.length > 0) {
    const fix = configured.length > 0 ? `add a certificate for ${uncovered.join(', ')} to tls.certificates, or remove the names from serverNames` : 'restart the gateway: it reissues its self-made certificate for serverNames';
    out.push(bad('certificate', configured.length > 0 ? 'fail' : 'warn', `no certificate names ${uncovered.join(', ')} (serverNames): clients will refuse the gateway there`, fix));
  }
  return out;
}

/** The soft limit on open files of `pid` (default this process), from /proc. */
export function openFileLimit(pid?: number): number | undefined {
  try {
    const text = readFileSync(`/proc/${pid ?? 'self'}/limits`, 'utf8');
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (!m) return undefined;
    return m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
  } catch {
    return undefined;
  }
}

function checkDescriptors(cfg: Config, pid: number | undefined): Finding {
  const need = descriptorsNeeded(cfg);
  const limit = openFileLimit(pid);
  const whose = pid === undefined ? 'this process' : `process ${pid}`;
  if (limit === undefined) return bad('descriptors', 'warn', `cannot read the open-file limit of ${whose} (/proc)`, `make sure the service gets LimitNOFILE=${need} or more`);
  if (limit < need) {
    const spread = workerCount(cfg) > 1 ? `, over ${workerCount(cfg)} workers with 25% head room` : '';
    return bad('descriptors', 'fail', `open-file limit of ${whose} is ${limit}; limits.maxConnections ${cfg.limits.maxConnections} needs ${need} per process (two per tunnel${spread}, plus ${DESCRIPTOR_MARGIN})`, `LimitNOFILE=${need} in the unit (deploy/systemd/oneport.service), or ulimit -n ${need}; or lower limits.maxConnections`);
  }
  return ok('descriptors', `open-file limit of ${whose} is ${limit}, enough for limits.maxConnections ${cfg.limits.maxConnections} (${need})`);
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function checkRedis(cfg: Config, opts: DoctorOptions): Promise<Finding[]> {
  const target = cfg.cluster.redis!;
  const timeoutMs = opts.timeoutMs ?? 3000;
  const out: Finding[] = [];
  const ca = cfg.cluster.redisCa ? readFileSync(cfg.cluster.redisCa, 'utf8') : undefined;
  if (typeof target !== 'string') out.push(...(await checkSentinels(target, ca, timeoutMs)));
  const where = typeof target === 'string' ? redactUrl(target) : `the master of ${target.name}`;
  const conn = createConnection(redisOptions(target, ca), { connectionName: 'oneport-doctor', connectTimeout: timeoutMs, commandTimeout: timeoutMs, retryStrategy: () => null });
  conn.on('error', () => undefined);
  try {
    await withTimeout(conn.connect(), timeoutMs, 'connect');
    await conn.ping();
  } catch (e) {
    conn.disconnect();
    return [...out, bad('redis', 'fail', `Redis at ${where} does not answer: ${(e as Error).message}`, 'start Redis, or correct cluster.redis (URL, password, TLS, cluster.redisCa)')];
  }
  try {
    out.push(ok('redis', `Redis at ${where} answers`));
    out.push(...(await redisPersistence(conn, where)));
    out.push(await clockSkew(conn, opts.now ?? Date.now));
  } finally {
    conn.disconnect();
  }
  return out;
}

function redactUrl(u: string): string {
  try {
    const url = new URL(u);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return '(unparsable URL)';
  }
}

/** `field:value` lines of an INFO section. */
function infoFields(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) m.set(line.slice(0, i), line.slice(i + 1));
  }
  return m;
}

/** The directory (users, VMs, signing keys) lives in Redis: it must survive a Redis restart and never be evicted. */
async function redisPersistence(conn: Redis, where: string): Promise<Finding[]> {
  const out: Finding[] = [];
  const persistence = infoFields(await conn.info('persistence'));
  const aof = persistence.get('aof_enabled') === '1';
  // CONFIG may be renamed away on a managed Redis; then only AOF can be seen.
  const save = await conn.config('GET', 'save').then((r) => String((r as string[])[1] ?? ''), () => undefined);
  if (!aof && save === '') {
    out.push(bad('redis', 'fail', `Redis at ${where} persists nothing (appendonly no, save ""): a Redis restart loses every user, VM and signing key`, 'set "appendonly yes" in redis.conf (and CONFIG SET appendonly yes to apply it now)'));
  } else if (!aof) {
    out.push(bad('redis', 'warn', `Redis at ${where} persists by snapshots only (save ${save === undefined ? '(unknown: CONFIG refused)' : `"${save}"`}): changes since the last one are lost if Redis stops`, 'set "appendonly yes" in redis.conf (and CONFIG SET appendonly yes)'));
  } else {
    out.push(ok('redis', `Redis at ${where} keeps an append-only file`));
  }
  if (persistence.get('rdb_last_bgsave_status') === 'err' || persistence.get('aof_last_write_status') === 'err') {
    out.push(bad('redis', 'fail', `Redis at ${where} failed its last write to disk`, 'see the Redis log: disk full, or its dir not writable'));
  }
  const policy = infoFields(await conn.info('memory')).get('maxmemory_policy') ?? 'noeviction';
  if (policy.startsWith('allkeys-')) out.push(bad('redis', 'fail', `Redis at ${where} evicts any key when full (maxmemory-policy ${policy}): it may drop users, VMs or signing keys`, 'set "maxmemory-policy noeviction" in redis.conf'));
  else if (policy !== 'noeviction') out.push(bad('redis', 'warn', `Redis at ${where} evicts keys with a time to live when full (maxmemory-policy ${policy}): tickets and sessions may vanish early`, 'set "maxmemory-policy noeviction" in redis.conf'));
  return out;
}

async function clockSkew(conn: Redis, now: () => number): Promise<Finding> {
  const before = now();
  const [sec, usec] = await conn.time();
  const after = now();
  const redisMs = Number(sec) * 1000 + Number(usec) / 1000;
  const skew = Math.round(redisMs - (before + after) / 2);
  // Half the round trip is the uncertainty: only the skew beyond it counts.
  const sure = Math.max(0, Math.abs(skew) - Math.ceil((after - before) / 2));
  const text = `this clock is ${Math.abs(skew)} ms ${skew > 0 ? 'behind' : 'ahead of'} Redis TIME`;
  const fix = 'run NTP (systemd-timesyncd or chrony) on this node and on the Redis host';
  if (sure > SKEW_FAIL_MS) return bad('clock', 'fail', `${text}: tickets and sessions expire at the wrong time across nodes`, fix);
  if (sure > SKEW_WARN_MS) return bad('clock', 'warn', text, fix);
  return ok('clock', text);
}

type SentinelConfig = Exclude<NonNullable<Config['cluster']['redis']>, string>;

async function checkSentinels(target: SentinelConfig, ca: string | undefined, timeoutMs: number): Promise<Finding[]> {
  const out: Finding[] = [];
  let reachable = 0;
  for (const s of target.sentinels) {
    const where = formatHostPort(s.host, s.port);
    const conn = createConnection(
      { host: s.host, port: s.port, ...(target.sentinelPassword !== undefined ? { password: target.sentinelPassword } : {}), ...(target.tls ? { tls: ca ? { ca } : {} } : {}) },
      { connectionName: 'oneport-doctor', connectTimeout: timeoutMs, commandTimeout: timeoutMs, retryStrategy: () => null },
    );
    conn.on('error', () => undefined);
    try {
      await withTimeout(conn.connect(), timeoutMs, 'connect');
      const master = (await conn.call('SENTINEL', 'get-master-addr-by-name', target.name)) as string[] | null;
      if (!master) {
        out.push(bad('sentinel', 'fail', `sentinel ${where} does not know master group "${target.name}"`, `SENTINEL MONITOR ${target.name} <host> <port> <quorum> on it, or correct cluster.redis.name`));
        continue;
      }
      reachable++;
      const quorum = await conn.call('SENTINEL', 'ckquorum', target.name).then(() => undefined, (e: Error) => e.message);
      if (quorum !== undefined) out.push(bad('sentinel', 'fail', `sentinel ${where}: ${quorum}`, 'start more sentinels, or lower the quorum: no failover can happen now'));
      else out.push(ok('sentinel', `sentinel ${where} answers: master ${master[0]}:${master[1]}, quorum reachable`));
    } catch (e) {
      out.push(bad('sentinel', 'fail', `sentinel ${where} does not answer: ${(e as Error).message}`, 'start it, or remove it from cluster.redis.sentinels'));
    } finally {
      conn.disconnect();
    }
  }
  if (reachable === 0) out.push(bad('sentinel', 'fail', 'no sentinel answers: the gateway cannot find Redis', 'start the sentinels, or correct cluster.redis.sentinels'));
  return out;
}

// ---------------------------------------------------------------------------------------------

/** The listen address as a client reaches it (0.0.0.0 and :: are reached on loopback). */
function dialHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

async function checkPort(cfg: Config, timeoutMs: number): Promise<Finding[]> {
  const listen = parseListen(cfg.listen);
  if (!listen || listen.port === 0) return [ok('port', `listen ${cfg.listen}: the system picks a port at start`)];
  const out: Finding[] = [await probeGateway(cfg, dialHost(listen.host), listen.port, timeoutMs, cfg.listen, listen.host)];
  const adv = cfg.cluster.redis !== undefined && cfg.cluster.advertise !== undefined ? parseListen(cfg.cluster.advertise) : undefined;
  if (adv && out[0]?.severity === 'ok') {
    const f = await probeGateway(cfg, adv.host, adv.port, timeoutMs, cfg.cluster.advertise!, undefined);
    out.push(f.severity === 'ok' ? f : bad('port', 'fail', `the advertised address ${cfg.cluster.advertise}: ${f.message}`, 'correct cluster.advertise, or open the firewall between the nodes'));
  }
  return out;
}

/**
 * Connect, then speak TLS and ask /healthz: is it oneport answering there? When nothing answers
 * and `bindHost` is given (our own listen address), whether the gateway could bind it.
 */
async function probeGateway(cfg: Config, host: string, port: number, timeoutMs: number, label: string, bindHost: string | undefined): Promise<Finding> {
  const where = formatHostPort(host, port);
  const socket = net.connect({ host, port });
  socket.on('error', () => undefined);
  socket.setTimeout(timeoutMs, () => socket.destroy(new Error('timed out')));
  try {
    await Promise.race([once(socket, 'connect'), once(socket, 'close').then(() => Promise.reject(new Error('closed')))]);
  } catch {
    socket.destroy();
    if (bindHost === undefined) return bad('port', 'fail', `nothing answers on ${label}`, 'start the gateway there');
    return canBind(bindHost, port, label);
  }
  const caFile = statePaths(cfg.state).caCert;
  const servername = cfg.serverNames.find((n) => net.isIP(n) === 0);
  const secure = tls.connect({
    socket,
    ...(servername !== undefined ? { servername } : {}),
    ...(existsSync(caFile) && cfg.tls.certificates.length === 0 ? { ca: readFileSync(caFile, 'utf8') } : {}),
    rejectUnauthorized: false,
  });
  secure.on('error', () => undefined);
  try {
    await Promise.race([once(secure, 'secureConnect'), once(secure, 'close').then(() => Promise.reject(new Error('closed during the TLS handshake')))]);
    secure.write(`GET /healthz HTTP/1.1\r\nHost: ${servername ?? host}\r\nConnection: close\r\n\r\n`);
    let reply = '';
    secure.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    await Promise.race([once(secure, 'end'), once(secure, 'close')]);
    if (!/^HTTP\/1\.1 200/.test(reply) || !reply.includes('"status":"ok"')) {
      return bad('port', 'fail', `${where} speaks TLS but is not a healthy oneport (/healthz answered ${reply.split('\r\n')[0] || 'nothing'})`, `stop what holds port ${port}, or change listen`);
    }
    if (!secure.authorized) {
      return bad('port', 'warn', `oneport answers on ${where}, but its certificate is not trusted here (${String(secure.authorizationError)})`, `clients must trust ${caFile}, or configure tls.certificates from a public CA`);
    }
    return ok('port', `oneport answers on ${where} (TLS, /healthz ok)`);
  } catch (e) {
    return bad('port', 'fail', `something listens on ${where} but does not speak TLS (${(e as Error).message})`, `stop what holds port ${port}, or change listen`);
  } finally {
    secure.destroy();
  }
}

/** Nothing answers: could the gateway bind the port (permission, in use by another address)? */
async function canBind(host: string, port: number, label: string): Promise<Finding> {
  const srv = net.createServer();
  try {
    srv.listen({ host, port, exclusive: true });
    await Promise.race([once(srv, 'listening'), once(srv, 'error').then(([e]) => Promise.reject(e as Error))]);
    return bad('port', 'warn', `nothing answers on ${label}; the port is free and this user may bind it (is the gateway running?)`, 'systemctl start oneport (or oneport serve)');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES') return bad('port', 'fail', `binding port ${port} needs privilege this user lacks`, 'AmbientCapabilities=CAP_NET_BIND_SERVICE in the unit (as shipped), or a port above 1023');
    if (code === 'EADDRNOTAVAIL') return bad('port', 'fail', `${host} is not an address of this machine`, 'correct listen');
    return bad('port', 'fail', `nothing answers on ${label} and the port cannot be bound (${code ?? (e as Error).message})`, `see what holds it: ss -ltnp 'sport = :${port}'`);
  } finally {
    srv.close();
  }
}
