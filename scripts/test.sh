#!/usr/bin/env bash
# The project's one test command: creates (or reuses) the virtualenv, installs clusterprune with its
# test extras (builds the Rust extension with maturin; torch + transformers for the checkpoint
# tests), then runs the Rust checks and tests, ruff, the documentation site's strict build, the
# abi3 wheel's build and pytest (which installs that wheel into a fresh virtualenv and runs the
# README's quick start).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${CLUSTERPRUNE_VENV:-$HOME/.cache/clusterprune/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/clusterprune/target}

# espeak-ng (a Debian package): the `selfgen --audio espeak` tests and the demo's offline speech
if ! command -v espeak-ng >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q espeak-ng || (apt-get update -q && apt-get install -y -q espeak-ng)) >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e "$ROOT[test]"

echo "== cargo fmt / clippy / test"
cargo fmt --all --check
cargo clippy --all-targets --release -- -D warnings
cargo test --release -p clusterprune-core

echo "== ruff"
"$VENV/bin/ruff" check python tests benches scripts
"$VENV/bin/ruff" format --check python tests benches scripts

echo "== docs (mkdocs build --strict)"
SITE=$(mktemp -d)
DIST=$(mktemp -d)
trap 'rm -rf "$SITE" "$DIST"' EXIT
NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet --site-dir "$SITE"

echo "== wheel (maturin build --release: one cp310-abi3 wheel)"
"$VENV/bin/maturin" build --release --out "$DIST"
export CLUSTERPRUNE_WHEEL
CLUSTERPRUNE_WHEEL=$(ls "$DIST"/clusterprune-*-cp310-abi3-*.whl)

echo "== pytest"
"$VENV/bin/python" -m pytest -q "$@"
