/**
 * Start a real gateway in-process for a test: temporary state folder, the embedded directory,
 * logs captured in memory (so tests can assert what was and was not logged), port 0 on loopback.
 * Teardown is registered on the test that asked for it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { buildConfig, type ConfigInput } from '../../gateway/config.js';
import { startGateway, type Gateway } from '../../gateway/server.js';
import { hashPassword } from '../../gateway/auth/passwords.js';
import { type EndpointInput, type VmRecord, toVmRecord, vmSchema } from '../../gateway/directory/directory.js';
import { REDACT_PATHS } from '../../gateway/log.js';
import type { AuthStore } from '../../gateway/auth/store.js';

export interface TestGateway extends Gateway {
  /** Every log line so far, parsed. */
  readonly logs: Array<Record<string, unknown>>;
  readonly logText: () => string;
  readonly state: string;
  addUser(name: string, password: string, opts?: { admin?: boolean; groups?: string[] }): Promise<void>;
  addVm(name: string, endpoints: EndpointInput[], users: string[], extra?: Partial<VmRecord>): Promise<VmRecord>;
  ticket(user: string, vm: string, protocol?: 'vnc' | 'spice' | 'rdp'): Promise<{ ticket: string; resume: string }>;
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

// Passwords hash slowly by design; tests reuse one hash per password.
const hashes = new Map<string, Promise<string>>();
function cachedHash(p: string): Promise<string> {
  let h = hashes.get(p);
  if (!h) hashes.set(p, (h = hashPassword(p)));
  return h;
}

/**
 * @param opts.state an existing state folder to start on (a restart); the caller removes it.
 * @param opts.store an auth store instead of the embedded one (the gateway closes it).
 */
export async function startTestGateway(t: Teardown, input: ConfigInput = {}, opts: { demo?: boolean; state?: string; store?: AuthStore } = {}): Promise<TestGateway> {
  const state = opts.state ?? mkdtempSync(join(tmpdir(), 'oneport-test-'));
  if (opts.state === undefined) t.teardown(() => rmSync(state, { recursive: true, force: true }));
  const logs: Array<Record<string, unknown>> = [];
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        lines.push(line);
        try {
          logs.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          /* not JSON: kept in text only */
        }
      }
      cb();
    },
  });
  const logger = pino({ level: 'debug', base: { node: 'test' }, redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, sink);
  const config = buildConfig({
    listen: '127.0.0.1:0',
    state,
    nodeId: 'test',
    ...input,
    demo: { enabled: opts.demo ?? false, ...(input.demo ?? {}) },
    shutdown: { drainMs: 2000, ...(input.shutdown ?? {}) },
    // Most tests stand an echo server in for a console, which speaks no protocol at all: the
    // protocol check is off unless a test turns it on (test/integration/console-handshake.test.ts).
    tunnel: { protocolCheck: false, ...(input.tunnel ?? {}) },
  });
  const gw = await startGateway(config, { logger, announce: () => {}, ...(opts.store ? { store: opts.store } : {}) });
  t.teardown(() => gw.close({ drainMs: 0 }));
  const dir = gw.ctx.dir;
  return Object.assign(gw, {
    logs,
    logText: () => lines.join('\n'),
    state,
    async addUser(name: string, password: string, o: { admin?: boolean; groups?: string[] } = {}) {
      await dir.putUser({
        name,
        passwordHash: await cachedHash(password),
        roles: o.admin ? ['user', 'admin'] : ['user'],
        groups: o.groups ?? [],
        sessionsNotBefore: 0,
      });
    },
    async addVm(name: string, endpoints: EndpointInput[], users: string[], extra: Partial<VmRecord> = {}) {
      const vm = { ...toVmRecord(vmSchema.parse({ name, node: 'test', endpoints, users })), ...extra };
      await dir.putVm(vm);
      return vm;
    },
    async ticket(user: string, vm: string, protocol?: 'vnc' | 'spice' | 'rdp') {
      const u = dir.getUser(user);
      const v = dir.getVm(vm);
      if (!u || !v) throw new Error(`no user ${user} or vm ${vm}`);
      const issued = await gw.ctx.auth.issueTicket(u, v, protocol ?? v.endpoints[0]!.protocol);
      return { ticket: issued.ticket, resume: issued.resume };
    },
  });
}
