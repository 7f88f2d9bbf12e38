#!/usr/bin/env bash
# The main job on a fresh machine: set up, then `robopolicy quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${ROBOPOLICY_VENV:-.venv}/bin/robopolicy" quickstart "$@"
