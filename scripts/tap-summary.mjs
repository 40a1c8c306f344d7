// Prints tap's closing summary as one plain "N passed, N failed" line, for CI logs.
import { readFileSync } from 'node:fs';
const text = readFileSync(process.argv[2], 'utf8');
const m = [...text.matchAll(/# \{ total: (\d+), pass: (\d+)(?:, fail: (\d+))?(?:, skip: (\d+))?/g)].pop();
if (!m) process.exit(1);
const [, , pass, fail = '0', skip] = m;
console.log(`tests: ${pass} passed, ${fail} failed${skip ? `, ${skip} skipped` : ''}`);
