#!/usr/bin/env bash
# `npm test`: system packages, type check (sources and tests), then every test with tap.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh
npx tsc -p tsconfig.json --noEmit
mkdir -p test-artifacts
set +e
npx tap "$@" 2>&1 | tee test-artifacts/tap-output.txt
status=${PIPESTATUS[0]}
set -e
node scripts/tap-summary.mjs test-artifacts/tap-output.txt || true
exit "$status"
