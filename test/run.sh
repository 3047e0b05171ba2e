#!/usr/bin/env bash
# The one test command (`npm test`): lint, type-check, then every test file under test/.
set -euo pipefail
shopt -s globstar nullglob
cd "$(dirname "$0")/.."
npx biome check .
npx tsc --noEmit -p .
files=(test/**/*.test.ts)
if [ ${#files[@]} -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
# A test that hangs fails after TEST_TIMEOUT_MS instead of hanging CI (the slowest passes in ~15 s).
exec node --import tsx --test --test-concurrency="${TEST_CONCURRENCY:-2}" \
  --test-timeout="${TEST_TIMEOUT_MS:-240000}" "${files[@]}"
