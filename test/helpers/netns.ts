/**
 * Real-client tests run in a private network namespace with loopback only (`unshare -n`), so no
 * client can resolve or reach anything but what the test started. A `<name>.test.ts` file spawns
 * its `<name>.inner.ts` there; the inner file refuses to run anywhere else (tap given a folder
 * would otherwise pick it up and run it on the host's network).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MARK = 'ONEPORT_IN_PRIVATE_NETNS';

/** For inner files: a skip reason unless we run inside the namespace the outer file made. */
export const outsideNetns: string | false =
  process.env[MARK] === '1' ? false : 'runs only inside its private network namespace (started by the matching .test.ts)';

/** Why the namespace cannot be made here (not root, no unshare), or false. */
export function netnsUnavailable(): string | false {
  const ns = spawnSync('unshare', ['-n', 'true']);
  return ns.status === 0 ? false : `needs a private network namespace (unshare -n, i.e. root): ${ns.stderr?.toString().trim() || ns.error?.message}`;
}

/** Whether each command is on PATH; the first missing one as a skip reason naming its package. */
export function missingCommands(cmds: ReadonlyArray<readonly [command: string, pkg: string]>): string | false {
  for (const [cmd, pkg] of cmds) {
    if (spawnSync('sh', ['-c', 'command -v "$0"', cmd]).status !== 0) return `${cmd} is missing (apt-get install ${pkg}; see scripts/system-packages.txt)`;
  }
  return false;
}

interface Spawner {
  spawn(cmd: string, args: string[], options: { env: NodeJS.ProcessEnv }): unknown;
}

/** Run `inner` (a URL relative to the caller) as a tap subtest inside `unshare -n` with loopback up. */
export function spawnInNetns(t: Spawner, inner: URL): void {
  const file = fileURLToPath(inner);
  t.spawn('unshare', ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx "${file}"`], {
    env: { ...process.env, [MARK]: '1' },
  });
}
