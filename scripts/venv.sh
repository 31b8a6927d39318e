#!/usr/bin/env bash
# Make (once) the project's virtual environment in .venv with xqute installed in
# editable mode plus the given extras; prints the path of its python.
# Usage: bash scripts/venv.sh [extras]     e.g. bash scripts/venv.sh test
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
extras=${1:-}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q --upgrade pip >&2 2>&1 | grep -v WARNING >&2 || true
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
"$venv/bin/python" -m pip install -q -e "$spec" 2>&1 | grep -v '^WARNING: Location' >&2 || true
"$venv/bin/python" -c 'import xqute' >&2
echo "$venv/bin/python"
