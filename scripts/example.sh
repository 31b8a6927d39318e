#!/usr/bin/env bash
# A real example end to end on a fresh machine: sets up .venv with xqute, then
# runs hundreds of jobs through the local scheduler and prints a summary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(bash scripts/venv.sh)
rm -rf .xqute-example
XQUTE_LOG_LEVEL=${XQUTE_LOG_LEVEL:-ERROR} "$python" examples/many_jobs.py 500 8
