#!/usr/bin/env bash
# README's first command: install clusterprune (with the eval, models and deploy extras) into a virtualenv and
# run the main job end to end on the embedded default (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLUSTERPRUNE_VENV:-$HOME/.cache/clusterprune/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/clusterprune/target}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[eval,models,deploy]"
exec "$VENV/bin/python" scripts/demo.py "$@"
