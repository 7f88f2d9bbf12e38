#!/usr/bin/env bash
# Creates .venv (or $ROBOPOLICY_VENV) and installs robopolicy into it, torch first and pinned.
# Idempotent: re-runs skip the install while setup.cfg and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ROBOPOLICY_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

# torch first, pinned to the builds that lie on this kind of machine's disk; left to itself pip would
# pick a newer multi-GB CUDA build. (aarch64 machines carry a CPU build of 2.9.1.)
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *)             TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac

stamp="$VENV/.robopolicy-installed"
want=$(cat setup.cfg scripts/setup.sh | sha256sum | cut -d' ' -f1)
pip_install() {  # quiet unless it fails
  "$PY" -m pip install -q "$@" > "$VENV/pip.log" 2>&1 || { cat "$VENV/pip.log"; echo "pip install $* failed" >&2; exit 1; }
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $VENV (torch first, pinned; about two minutes the first time) ..."
  pip_install --upgrade pip
  pip_install $TORCH
  pip_install -e ".[dev]"
  # robosuite without its dependencies: it pins mink, which pins numpy<2; Lift never imports mink
  pip_install --no-deps "robosuite==1.5.2"
  # robomimic for the encoder parity test only, also without dependencies (egl_probe needs cmake)
  pip_install --no-deps "robomimic==0.3.0"
  "$PY" -c "import robopolicy, torch, zarr" # fail here, not in a test, if the install did not take
  echo "$want" > "$stamp"
fi
