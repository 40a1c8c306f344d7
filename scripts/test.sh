#!/usr/bin/env bash
# `npm test`: system packages, type check (sources and tests), then every test with tap.
# The cluster suites (several gateway processes each, timing-sensitive elections) run last and
# one at a time, so they never share the two cores with another suite; with arguments, tap runs
# just those.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh
npx tsc -p tsconfig.json --noEmit
mkdir -p test-artifacts
out=test-artifacts/tap-output.txt
set +e
if [[ $# -gt 0 ]]; then
  npx tap "$@" 2>&1 | tee "$out"
  status=${PIPESTATUS[0]}
else
  # Globs, not folders: given a folder tap would also run the *.inner.ts halves of the e2e tests,
  # which must only run inside their private network namespace.
  # test/e2e/browser-cluster.test.ts runs a cluster too (four gateways, Chromium): with the cluster
  # suites.
  mapfile -t e2e < <(ls test/e2e/*.test.ts | grep -v '/browser-cluster\.test\.ts$')
  npx tap 'test/unit/**/*.test.ts' 'test/integration/**/*.test.ts' "${e2e[@]}" 2>&1 | tee "$out"
  status=${PIPESTATUS[0]}
  # The soak (test/soak) measures the gateway staying flat: alone too.
  npx tap --jobs 1 'test/cluster/**/*.test.ts' test/e2e/browser-cluster.test.ts 'test/soak/**/*.test.ts' 2>&1 | tee -a "$out"
  cluster_status=${PIPESTATUS[0]}
  [[ $status -eq 0 ]] && status=$cluster_status
fi
set -e
node scripts/tap-summary.mjs "$out" || true
exit "$status"
