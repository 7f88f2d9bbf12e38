#!/usr/bin/env bash
# The tests on a fresh machine: set up, lint, then the default (fast) test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${ROBOPOLICY_VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/robopolicy" results --check   # the README's results section is what the artifacts generate
exec "$VENV/bin/python" -m pytest -q "$@"
