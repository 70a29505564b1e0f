#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtualenv (no editable install, no repository on
# sys.path) and run .ci/wheel_smoke.py from a scratch directory outside the repository.
# PYTHON: the interpreter that builds the wheel (default: the project's virtualenv).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
scratch="$(mktemp -d -t broadcast-wheel-XXXXXX)"
trap 'rm -rf "$scratch"' EXIT

"$python" -m pip wheel --quiet --no-deps --wheel-dir "$scratch/dist" "$repo"
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --upgrade pip
"$scratch/venv/bin/python" -m pip install --quiet "$scratch"/dist/broadcast-*.whl
cp "$repo/.ci/wheel_smoke.py" "$scratch/"
cd "$scratch"
env -u PYTHONPATH "$scratch/venv/bin/python" "$scratch/wheel_smoke.py"
