/**
 * The soak, three minutes of it (`npm run soak` runs thirty): churning tunnels next to a hundred
 * adversarial connections, the gateway in its own process probed every five seconds. Nothing may
 * fail but what is injected; descriptors, timers and the heap (after a full collection) return
 * to idle once the load stops, the heap does not grow under load, setup p99 stays steady. Runs
 * with the cluster suites, one file at a time, so its figures are not another suite's load.
 */
import t from 'tap';
import { DEFAULT_SOAK, judgeSoak, runSoak } from '../../bench/soak.js';

const MINUTES = Number(process.env.ONEPORT_SOAK_MINUTES ?? 3);
t.setTimeout((MINUTES + 4) * 60_000);

t.test(`soak: ${MINUTES} minutes of churn beside adversarial connections`, async (t) => {
  const report = await runSoak({ ...DEFAULT_SOAK, durationMs: MINUTES * 60_000, log: (l) => t.comment(l) });
  for (const v of judgeSoak(report)) t.ok(v.ok, `${v.label}: ${v.detail}`);
  t.ok(report.tunnels > 100, `${report.tunnels} churn tunnels served`);
});
