/**
 * deploy/systemd/oneport.service (README "Install as a service"): systemd itself accepts it
 * (`systemd-analyze verify`, where any complaint fails the test, unknown keys included), and it
 * keeps the promises the README makes: restart on failure, descriptors for the tunnel target,
 * port 443 without root, a read-only system with only the state folder writable, its own user.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildConfig } from '../../gateway/config.js';
import { descriptorsNeeded } from '../../gateway/doctor.js';
import { missingCommands } from '../helpers/netns.js';

const run = promisify(execFile);
const UNIT = new URL('../../deploy/systemd/oneport.service', import.meta.url).pathname;
const text = readFileSync(UNIT, 'utf8');

/** Every `Key=value` of the [Service] section (a key given twice keeps both values). */
function serviceKeys(unit: string): Map<string, string[]> {
  const keys = new Map<string, string[]>();
  let section = '';
  for (const raw of unit.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1] ?? '';
      continue;
    }
    const eq = line.indexOf('=');
    if (section !== 'Service' || eq < 0) continue;
    const k = line.slice(0, eq);
    keys.set(k, [...(keys.get(k) ?? []), line.slice(eq + 1)]);
  }
  return keys;
}

t.test('the unit keeps the README promises', async (t) => {
  const s = serviceKeys(text);
  const one = (k: string): string | undefined => s.get(k)?.at(-1);
  t.match(one('Type'), /^(simple|notify)$/);
  t.equal(one('Restart'), 'on-failure');
  t.ok(Number(one('LimitNOFILE')) >= descriptorsNeeded(buildConfig({})), `LimitNOFILE covers the default limits.maxConnections (${descriptorsNeeded(buildConfig({}))} descriptors)`);
  t.equal(one('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE');
  t.equal(one('CapabilityBoundingSet'), 'CAP_NET_BIND_SERVICE', 'no other capability can be gained');
  t.equal(one('NoNewPrivileges'), 'yes');
  t.equal(one('ProtectSystem'), 'strict');
  t.equal(one('StateDirectory'), 'oneport', 'the state folder is the one writable place');
  t.ok(s.get('Environment')?.includes('ONEPORT_STATE=/var/lib/oneport'), 'the gateway uses the StateDirectory as its state folder');
  t.match(one('User'), /^(?!root$)\w+$/, 'a dedicated user');
  t.ok(Number(one('TimeoutStopSec')?.replace(/s$/, '')) * 1000 > buildConfig({}).shutdown.drainMs, 'systemd waits longer than the default drain before SIGKILL');
  const sysusers = readFileSync(new URL('../../deploy/systemd/oneport.sysusers.conf', import.meta.url), 'utf8');
  t.match(sysusers, new RegExp(`^u ${one('User')} `, 'm'), 'the sysusers file creates that user');
});

t.test('systemd-analyze verify accepts the unit', { skip: missingCommands([['systemd-analyze', 'systemd']]) }, async (t) => {
  // verify also checks that ExecStart exists: point it at a stand-in for the installed binary.
  const dir = mkdtempSync(join(tmpdir(), 'oneport-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'oneport');
  writeFileSync(bin, '#!/bin/sh\n');
  chmodSync(bin, 0o755);
  t.match(text, /^ExecStart=\/usr\/local\/bin\/oneport serve$/m, 'ExecStart is where `npm install -g` puts oneport');
  const unit = join(dir, 'oneport.service');
  writeFileSync(unit, text.replace('/usr/local/bin/oneport', bin));
  const r = await run('systemd-analyze', ['verify', unit]).catch((e: { code: number; stdout: string; stderr: string }) => e);
  t.equal('code' in r ? r.code : 0, 0, 'verify exits 0');
  t.equal(r.stderr.trim(), '', 'and has nothing to say (no unknown or misspelt keys)');
});
