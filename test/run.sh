#!/usr/bin/env bash
# The one test command (`npm test`): lint, type-check, then every test file under test/.
set -euo pipefail
shopt -s globstar nullglob
cd "$(dirname "$0")/.."
npx biome check .
npx tsc --noEmit -p .
files=(test/**/*.test.ts)
if [ ${#files[@]} -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
exec node --import tsx --test --test-concurrency="${TEST_CONCURRENCY:-2}" "${files[@]}"
