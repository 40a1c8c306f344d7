/**
 * Micro-benchmarks of the per-connection hot spots, in ns per operation:
 *
 *  - first-bytes routing: `decide()` (gateway/listener.ts) over real first segments (a ClientHello
 *    captured from Node's own TLS client, CONNECT request lines, PROXY v1/v2 headers, garbage, a
 *    short read), plus the VNC and SPICE detectors on their own;
 *  - TLS: `certificateMatchesName`, which the gateway's SNI callback (gateway/server.ts) runs for
 *    every handshake that carries a server name;
 *  - console tickets: `checkTicket` (HMAC-SHA256 + constant-time compare) for a valid ticket and
 *    for the cheap refusals, and `mintTicket` for reference;
 *  - the embedded directory: `MemoryDirectory#getVm` among 10,000 VMs (hit, miss), and, for
 *    scale, one `putVm` into that directory (it rewrites and fsyncs the whole file).
 *
 *   node --import tsx bench/micro.ts          (also run at the end of bench/run.ts)
 */
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decide } from '../gateway/listener.js';
import { vncDetector } from '../protocols/vnc.js';
import { spiceDetector } from '../protocols/spice.js';
import { V2_SIGNATURE } from '../protocols/proxy.js';
import { checkTicket, mintTicket } from '../gateway/auth/tickets.js';
import { MemoryDirectory, newSigningKey } from '../gateway/directory/memory.js';
import { type VmRecord, toVmRecord, vmSchema } from '../gateway/directory/directory.js';
import { certificateMatchesName, createCa, issueServerCert } from '../certs/ca.js';

export interface MicroResult {
  readonly group: string;
  readonly name: string;
  readonly nsPerOp: number;
  readonly opsPerSecond: number;
  readonly iterations: number;
  /** What the operation returned, to show the benchmark measured the intended branch. */
  readonly outcome: string;
}

export interface MicroOptions {
  /** Target wall time per case. @default 300 */
  readonly msPerCase?: number;
  readonly log?: (line: string) => void;
}

const blackhole: unknown[] = new Array(8);

function measure(group: string, name: string, fn: (i: number) => unknown, msPerCase: number, describe: (r: unknown) => string): MicroResult {
  const outcome = describe(fn(0));
  // Warm up and calibrate: double the batch until it takes >= 10 ms.
  let n = 1;
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) blackhole[i & 7] = fn(i);
    const ns = Number(process.hrtime.bigint() - t0);
    if (ns >= 10e6 || n >= 1 << 24) break;
    n *= 2;
  }
  // Then batches of n until the time is spent; the median batch is the answer.
  const perOp: number[] = [];
  let iterations = 0;
  const end = Date.now() + msPerCase;
  while (Date.now() < end || perOp.length < 3) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) blackhole[i & 7] = fn(i);
    perOp.push(Number(process.hrtime.bigint() - t0) / n);
    iterations += n;
  }
  perOp.sort((a, b) => a - b);
  const nsPerOp = perOp[Math.floor(perOp.length / 2)] as number;
  return { group, name, nsPerOp, opsPerSecond: 1e9 / nsPerOp, iterations, outcome };
}

/** The first segment Node's TLS client sends (a real ClientHello with SNI and ALPN). */
async function captureClientHello(): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no ClientHello captured')), 5000);
      server.once('connection', (s) => {
        s.once('data', (d: Buffer) => {
          clearTimeout(timer);
          s.destroy();
          resolve(d);
        });
      });
      const c = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ALPNProtocols: ['http/1.1'] });
      c.on('error', () => {});
    });
  } finally {
    server.close();
  }
}

function verdict(r: unknown): string {
  const v = r as { kind: string; route?: string };
  return v.kind === 'route' ? `route ${v.route ?? '?'}` : v.kind;
}

export async function runMicro(opts: MicroOptions = {}): Promise<MicroResult[]> {
  const ms = opts.msPerCase ?? 300;
  const log = opts.log ?? (() => {});
  const results: MicroResult[] = [];
  const add = (r: MicroResult): void => {
    results.push(r);
    log(`  ${r.group.padEnd(10)} ${r.name.padEnd(52)} ${fmtNs(r.nsPerOp).padStart(10)}/op  (${r.outcome})`);
  };

  // --- detectors, through decide() as the listener calls them -----------------------------------
  const hello = await captureClientHello();
  const connect = Buffer.from('CONNECT bench:5900 HTTP/1.1\r\nHost: bench:5900\r\nProxy-Authorization: Bearer aaaa\r\n\r\n', 'latin1');
  const get = Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n', 'latin1');
  const proxyV1 = Buffer.concat([Buffer.from('PROXY TCP4 192.0.2.10 192.0.2.1 51234 8443\r\n', 'latin1'), hello]);
  const v2body = Buffer.alloc(12);
  v2body.set([192, 0, 2, 10, 192, 0, 2, 1]);
  v2body.writeUInt16BE(51234, 8);
  v2body.writeUInt16BE(8443, 10);
  const proxyV2 = Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x11, 0x00, 0x0c]), v2body, hello]);
  const ssh = Buffer.from('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n', 'latin1');
  const partial = hello.subarray(0, 3);
  const rfb = Buffer.from('RFB 003.008\n', 'latin1');
  const spice = Buffer.concat([Buffer.from('REDQ', 'latin1'), Buffer.alloc(12)]);

  add(measure('detect', `decide: TLS ClientHello (${hello.length} B)`, () => decide(hello, true), ms, verdict));
  add(measure('detect', 'decide: CONNECT request (clear text)', () => decide(connect, true), ms, verdict));
  add(measure('detect', 'decide: GET request (clear text)', () => decide(get, true), ms, verdict));
  add(measure('detect', 'decide: PROXY v1 header + ClientHello', () => decide(proxyV1, true), ms, verdict));
  add(measure('detect', 'decide: PROXY v2 header + ClientHello', () => decide(proxyV2, true), ms, verdict));
  add(measure('detect', 'decide: ClientHello after PROXY (proxy not allowed)', () => decide(hello, false), ms, verdict));
  add(measure('detect', 'decide: SSH banner (rejected)', () => decide(ssh, true), ms, verdict));
  add(measure('detect', 'decide: 3 bytes of a ClientHello (need more)', () => decide(partial, true), ms, verdict));
  add(measure('detect', 'vncDetector: RFB 003.008 banner', () => vncDetector.detect(rfb), ms, (r) => (r as { kind: string }).kind));
  add(measure('detect', 'spiceDetector: REDQ link header', () => spiceDetector.detect(spice), ms, (r) => (r as { kind: string }).kind));

  // --- SNI: what buildSecureContexts' callback does per handshake -------------------------------
  const pem = issueServerCert(createCa({ commonName: 'micro CA' }), ['localhost', '127.0.0.1', '::1']);
  const yes = (r: unknown): string => (r ? 'match' : 'no match');
  add(measure('tls', 'certificateMatchesName(cert PEM, "localhost")', () => certificateMatchesName(pem.cert, 'localhost'), ms, yes));

  // --- tickets ----------------------------------------------------------------------------------
  const keys = { current: newSigningKey(1), previous: [newSigningKey(0)] };
  const now = Date.now();
  const { ticket } = mintTicket(keys, 'vm-4242', 'vnc', 60_000, now);
  const foreign = mintTicket(keys, 'other-vm', 'vnc', 60_000, now).ticket;
  const ok = (r: unknown): string => {
    const c = r as { ok: boolean; reason?: string };
    return c.ok ? 'ok' : (c.reason ?? 'refused');
  };
  add(measure('tickets', 'checkTicket: valid', () => checkTicket(keys, ticket, 'vm-4242', now), ms, ok));
  add(measure('tickets', 'checkTicket: ticket of another VM (bad MAC)', () => checkTicket(keys, foreign, 'vm-4242', now), ms, ok));
  add(measure('tickets', 'checkTicket: expired', () => checkTicket(keys, ticket, 'vm-4242', now + 120_000), ms, ok));
  add(measure('tickets', 'checkTicket: malformed (a password)', () => checkTicket(keys, 'correct horse battery staple', 'vm-4242', now), ms, ok));
  add(measure('tickets', 'mintTicket (reference)', () => mintTicket(keys, 'vm-4242', 'vnc', 60_000, now), ms, () => 'minted'));

  // --- directory --------------------------------------------------------------------------------
  const dirState = mkdtempSync(join(tmpdir(), 'oneport-bench-dir-'));
  try {
    const N = 10_000;
    const vms: VmRecord[] = [];
    for (let i = 0; i < N; i++) {
      vms.push(
        toVmRecord(
          vmSchema.parse({
            name: `vm-${i}`,
            node: `node-${i % 8}`,
            endpoints: [
              { protocol: 'vnc', host: '10.0.0.1', port: 5900 + (i % 100) },
              { protocol: 'spice', host: '10.0.0.1', port: 6000 + (i % 100) },
            ],
            users: [`user-${i % 1000}`],
          }),
        ),
      );
    }
    const file = join(dirState, 'directory.json');
    // Loaded from a file: adding 10,000 VMs one putVm at a time is quadratic (each put serialises
    // the whole directory), see the putVm line below.
    writeFileSync(file, JSON.stringify({ format: 'oneport-directory/1', version: 1, users: [], vms, keys }));
    const dir = new MemoryDirectory(file);
    const names = vms.map((v) => v.name);
    const misses = names.map((n) => `${n}-x`);
    const found = (r: unknown): string => (r ? 'found' : 'undefined');
    add(measure('directory', `getVm among ${N} VMs: hit`, (i) => dir.getVm(names[i % N] as string), ms, found));
    add(measure('directory', `getVm among ${N} VMs: miss`, (i) => dir.getVm(misses[i % N] as string), ms, found));
    // A few puts only: each one rewrites and fsyncs the whole file.
    const puts: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = process.hrtime.bigint();
      await dir.putVm({ ...(vms[i] as VmRecord), epoch: i + 1 });
      puts.push(Number(process.hrtime.bigint() - t0));
    }
    puts.sort((a, b) => a - b);
    const put = puts[2] as number;
    add({ group: 'directory', name: `putVm into ${N} VMs (file rewrite + fsync)`, nsPerOp: put, opsPerSecond: 1e9 / put, iterations: puts.length, outcome: 'saved' });
    await dir.close();
  } finally {
    rmSync(dirState, { recursive: true, force: true });
  }
  return results;
}

export function fmtNs(ns: number): string {
  if (!Number.isFinite(ns)) return '-';
  if (ns < 1000) return `${ns.toFixed(ns < 10 ? 2 : ns < 100 ? 1 : 0)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(ns < 1e4 ? 2 : 1)} µs`;
  return `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 1)} ms`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  console.log(`micro-benchmarks (node ${process.version})`);
  await runMicro({ log: (l) => console.log(l) });
}
