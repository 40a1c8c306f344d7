// Prints tap's closing summaries (one per tap run in the file) as one plain "N passed, N failed" line, for CI logs.
import { readFileSync } from 'node:fs';
const text = readFileSync(process.argv[2], 'utf8');
const runs = [...text.matchAll(/# \{ total: (\d+), pass: (\d+)(?:, fail: (\d+))?(?:, skip: (\d+))?(?:, todo: \d+)? \}/g)];
if (runs.length === 0) process.exit(1);
let pass = 0;
let fail = 0;
let skip = 0;
for (const m of runs) {
  pass += Number(m[2]);
  fail += Number(m[3] ?? 0);
  skip += Number(m[4] ?? 0);
}
console.log(`tests: ${pass} passed, ${fail} failed${skip ? `, ${skip} skipped` : ''} (${runs.length} tap run${runs.length > 1 ? 's' : ''})`);
