/**
 * README "Monitoring": the alert rules pass `promtool check rules` and their own promtool unit
 * tests (deploy/prometheus/oneport-alerts.test.yml), and every metric the Grafana dashboard and
 * the rules name is one a running gateway exports on /metrics (a renamed metric fails here).
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { startTestGateway } from '../helpers/gateway.js';
import { apiClient } from '../helpers/api.js';
import { missingCommands } from '../helpers/netns.js';

const run = promisify(execFile);
const DEPLOY = new URL('../../deploy/', import.meta.url).pathname;
const RULES = `${DEPLOY}prometheus/oneport-alerts.yml`;
const DASHBOARD = `${DEPLOY}grafana/oneport.json`;
const noPromtool = missingCommands([['promtool', 'prometheus']]);

interface Panel {
  readonly title: string;
  readonly type: string;
  readonly targets?: ReadonlyArray<{ readonly expr: string }>;
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[]; templating: { list: Array<{ definition?: string }> } };
const dashboardText = [...dashboard.panels.flatMap((p) => (p.targets ?? []).map((x) => x.expr)), ...dashboard.templating.list.map((v) => v.definition ?? '')].join('\n');
const rulesText = readFileSync(RULES, 'utf8');

/** Every oneport_* name in a text. */
function metricNames(text: string): Set<string> {
  return new Set(text.match(/\boneport_[a-z0-9_]+/g) ?? []);
}

t.test('promtool accepts the rules and their unit tests pass', { skip: noPromtool }, async (t) => {
  const check = await run('promtool', ['check', 'rules', RULES]);
  t.match(check.stdout, /SUCCESS: \d+ rules found/);
  const unit = await run('promtool', ['test', 'rules', 'oneport-alerts.test.yml'], { cwd: `${DEPLOY}prometheus` });
  t.match(unit.stdout, /SUCCESS/);
});

t.test('the dashboard shows what the issue asks for, each panel with a query', async (t) => {
  for (const p of dashboard.panels.filter((x) => x.type !== 'row')) t.ok((p.targets ?? []).length > 0, `panel "${p.title}" queries something`);
  const names = metricNames(dashboardText);
  for (const m of [
    'oneport_tunnels_active', // tunnels
    'oneport_tunnels_total', // refusals by code
    'oneport_tunnel_setup_seconds_bucket', // setup time
    'oneport_directory_mirror_age_seconds', // mirror age
    'oneport_cluster_epoch', // leader changes
    'oneport_node_failovers_total', // failovers
    'oneport_session_resumes_total', // resumes
  ]) {
    t.ok(names.has(m), `the dashboard charts ${m}`);
  }
  t.match(dashboardText, /sum by \(result\) \(rate\(oneport_tunnels_total\{[^}]*result!="ok"\}/, 'refusals are broken down by code');
});

t.test('every metric in the dashboard and the rules is on /metrics of a running gateway', async (t) => {
  const gw = await startTestGateway(t);
  const api = apiClient(t, gw);
  const r = await api<string>('GET', '/metrics');
  t.equal(r.status, 200);
  // A labelled series shows only once counted; its HELP/TYPE lines are always there.
  const exported = new Set<string>();
  for (const [, name, type] of r.body.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    exported.add(name!);
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.add(`${name}${s}`);
  }
  t.ok(exported.size > 30, `${exported.size} metric names exported`);
  const wanted = new Set([...metricNames(dashboardText), ...metricNames(rulesText)]);
  t.ok(wanted.size > 25, `${wanted.size} metric names used`);
  const missing = [...wanted].filter((m) => !exported.has(m)).sort();
  t.same(missing, [], 'no metric the dashboard or rules name is missing from /metrics');
});
