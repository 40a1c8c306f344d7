/**
 * `oneport serve` listens to SIGTERM from its first moment: one that arrives while the node is
 * still starting (here: on its very first log line, long before the port opens) is not the
 * default "die now" but a drain once the node runs, then exit 0. With one process and with a
 * primary and two workers.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deadline } from '../helpers/wait.js';
import { spawnServe } from '../helpers/serve.js';

for (const workers of [1, 2]) {
  t.test(`a SIGTERM during the start drains the node once it has started (workers: ${workers})`, async (t) => {
    const state = mkdtempSync(join(tmpdir(), 'oneport-signals-'));
    t.teardown(() => rmSync(state, { recursive: true, force: true }));
    const config = join(state, 'config.json');
    writeFileSync(config, JSON.stringify({ listen: '127.0.0.1:0', state, nodeId: 'solo', workers, demo: { enabled: false }, log: { level: 'info', format: 'json' }, shutdown: { drainMs: 5000, unreadyMs: 0 } }));
    const { proc, lines, exited } = spawnServe(t, config, state);
    // The first line (a fresh state folder: "created ...") comes before anything listens.
    await Promise.race([new Promise<void>((r) => proc.stdout!.once('data', () => r())), deadline(60_000, 'the first log line')]);
    t.notOk(lines.some((l) => l.event === 'listening'), 'not listening yet when the signal is sent');
    proc.kill('SIGTERM');
    const code = await Promise.race([exited, deadline(90_000, 'the node to exit')]);
    t.equal(code, 0, 'exit 0: stopped by its own drain, not killed by the signal');
    const events = lines.map((l) => l.event);
    t.ok(events.includes('listening'), 'it finished starting');
    // In one process's order: a worker's lines reach the shared stdout in no set order with the primary's.
    const own = lines.filter((l) => l.worker === undefined || l.worker === 'primary').map((l) => l.event);
    t.ok(own.indexOf('drain-started') > own.indexOf('listening'), 'then drained');
    t.ok(events.includes('stopped'), 'and stopped');
  });
}
