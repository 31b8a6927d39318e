#!/usr/bin/env bash
# Make (once) the project's virtual environment in .venv with xqute installed in
# editable mode plus the given extras; prints the path of its python.
# Usage: bash scripts/venv.sh [extras]     e.g. bash scripts/venv.sh test
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
extras=${1:-}
log="$venv.install.log"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
if ! "$venv/bin/python" -m pip install -q -e "$spec" >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing xqute into $venv failed (log above)" >&2
    exit 1
fi
"$venv/bin/python" -c 'import xqute' >&2
echo "$venv/bin/python"
