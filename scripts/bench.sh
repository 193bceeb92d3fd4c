#!/usr/bin/env bash
# Run hamopt's main job (the quick benchmark suite on bundled data) in its own environment.
# Extra arguments go to `hamopt bench`, e.g. scripts/bench.sh --out my-report
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=$(bash scripts/setup.sh)
exec "$py" -m hamopt bench "$@"
