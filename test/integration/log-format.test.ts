/**
 * README "Observability": logs are JSON lines, or pino-pretty's human-readable lines on a
 * terminal (`log.format`, `--log-format`); the same logger, so the same redaction: a ticket,
 * token or password never shows in either form. The real CLI is run on a pseudo-terminal
 * (`script`, Debian's bsdutils) and on a pipe.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { createLogger, type LogFormat } from '../../gateway/log.js';
import { loadConfig } from '../../gateway/config.js';
import { deadline } from '../helpers/wait.js';
import { missingCommands } from '../helpers/netns.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'gateway', 'cli.ts');

/** A stream that resolves `first` with the first entry written to it (one write each, in both forms). */
function capture(): { stream: Writable; first: Promise<string> } {
  let resolve: (s: string) => void = () => {};
  const first = new Promise<string>((r) => (resolve = r));
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      resolve(chunk.toString('utf8'));
      cb();
    },
  });
  return { stream, first };
}

const SECRETS = { ticket: 'TICKET-SECRET-1', password: 'PASSWORD-SECRET-2', token: 'TOKEN-SECRET-3', req: { headers: { authorization: 'Bearer AUTH-SECRET-4', cookie: '__Host-oneport_session=COOKIE-SECRET-5' } } };

for (const format of ['json', 'pretty'] as const satisfies readonly LogFormat[]) {
  t.test(`${format}: the line reads as it should and carries no secret`, async (t) => {
    const { stream, first } = capture();
    const log = createLogger({ level: 'info', nodeId: 'n1', destination: stream, format });
    log.info({ event: 'tunnel', user: 'alice', vm: 'desk', ...SECRETS, ctx: { ticket: 'NESTED-SECRET-6' } }, 'tunnel closed');
    const entry = await Promise.race([first, deadline(5000, 'a log entry')]);
    for (const secret of ['TICKET-SECRET-1', 'PASSWORD-SECRET-2', 'TOKEN-SECRET-3', 'AUTH-SECRET-4', 'COOKIE-SECRET-5', 'NESTED-SECRET-6']) t.notMatch(entry, secret, `${secret} is not in the entry`);
    if (format === 'json') {
      t.equal(entry.indexOf('\n'), entry.length - 1, 'one line');
      const parsed = JSON.parse(entry) as Record<string, unknown>;
      t.match(parsed, { level: 'info', node: 'n1', event: 'tunnel', user: 'alice', msg: 'tunnel closed', ticket: '[redacted]', password: '[redacted]', req: { headers: { authorization: '[redacted]' } } });
    } else {
      t.throws(() => JSON.parse(entry), 'not JSON');
      const [head, ...fields] = entry.trimEnd().split('\n');
      t.match(head, /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO: tunnel closed$/, 'time, level and message first');
      t.ok(fields.includes('    node: "n1"') && fields.includes('    ticket: "[redacted]"'), 'then one field a line, redacted ones too');
    }
  });
}

t.test('the CLI: pretty on a terminal, JSON lines on a pipe, --log-format overrides', { skip: missingCommands([['script', 'bsdutils']]) }, async (t) => {
  /** Start `oneport serve` on a fresh state folder; the first log line (cluster CA created), then stop it. */
  const firstLogLine = async (terminal: boolean, extra: string[] = []): Promise<string> => {
    const state = mkdtempSync(join(tmpdir(), 'oneport-logfmt-'));
    // (Under `script`, the node is the pty's child: it may still be writing a moment after `script` exits.)
    t.teardown(() => rmSync(state, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }));
    const argv = [process.execPath, '--import', 'tsx', CLI, 'serve', '--listen', '127.0.0.1:0', '--state', state, ...extra];
    // `script` gives the command a pseudo-terminal as stdout (and copies what it writes to ours).
    const quoted = argv.map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    const proc = terminal ? spawn('script', ['-qfec', quoted, '/dev/null'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (proc.exitCode === null) proc.kill('SIGKILL');
    });
    let out = '';
    const line = new Promise<string>((resolve, reject) => {
      proc.stdout!.on('data', (d: Buffer) => {
        out += d.toString('utf8');
        const l = out.split(/\r?\n/).find((x) => x.includes('created cluster CA'));
        if (l !== undefined) resolve(l);
      });
      proc.on('exit', (code) => reject(new Error(`serve exited (${code}) before logging: ${out}`)));
    });
    const exited = new Promise<void>((r) => (proc.exitCode !== null ? r() : proc.once('exit', () => r())));
    try {
      return await Promise.race([line, deadline(30_000, 'the first log line')]);
    } finally {
      // Gone before its state folder is removed (it writes there while it starts and stops).
      proc.kill('SIGTERM');
      const hard = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(hard);
    }
  };
  const tty = await firstLogLine(true);
  t.match(tty, /\u001b\[\d+m/, 'coloured on a terminal');
  // eslint-disable-next-line no-control-regex
  t.match(tty.replace(/\u001b\[[\d;]*m/g, ''), /^\[[\d :.-]+\] INFO: created cluster CA$/, 'one human-readable line');
  const piped = await firstLogLine(false);
  t.match(JSON.parse(piped), { level: 'info', event: 'state-created', msg: 'created cluster CA' }, 'a JSON line on a pipe');
  const forced = await firstLogLine(true, ['--log-format', 'json']);
  t.match(JSON.parse(forced.trim()), { event: 'state-created' }, '--log-format json on a terminal');
});

t.test('log.format from the file, the environment, a flag; a --log-level flag keeps the file\'s format', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-logcfg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const configFile = join(dir, 'config.json');
  writeFileSync(configFile, JSON.stringify({ log: { format: 'json', level: 'warn' } }));
  t.match(loadConfig({ configFile, env: {} }).log, { format: 'json', level: 'warn' });
  t.match(loadConfig({ configFile, env: {}, overrides: { log: { level: 'debug' } } }).log, { format: 'json', level: 'debug' }, '--log-level alone');
  t.match(loadConfig({ configFile, env: { ONEPORT_LOG_FORMAT: 'pretty' } }).log, { format: 'pretty', level: 'warn' }, 'ONEPORT_LOG_FORMAT');
  t.match(loadConfig({ env: {} }).log, { format: 'auto', level: 'info' }, 'defaults');
  t.throws(() => loadConfig({ env: { ONEPORT_LOG_FORMAT: 'xml' } }), /log\.format/, 'an unknown format is refused');
});
