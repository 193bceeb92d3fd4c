#!/usr/bin/env bash
# Run hamopt's whole test suite (and ruff) in its own environment; sets it up if needed.
# Extra arguments go to pytest, e.g. scripts/test.sh -k hfac
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=$(bash scripts/setup.sh)
"$py" -m ruff check src tests benchmarks
workers=${HAMOPT_TEST_WORKERS:-auto}
# pytest exits 5 when it collected no test: treat that as a failure, like any other.
"$py" -m pytest -n "$workers" -q "$@"
