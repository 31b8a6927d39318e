#!/usr/bin/env bash
# A real example end to end on a fresh machine: sets up .venv with xqute, then
# runs 500 shell commands as local jobs with `xqute run` (every 50th fails on
# purpose), prints the run summary, then the failed jobs with `xqute status`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(bash scripts/venv.sh)
xqute="$(dirname "$python")/xqute"
rm -rf .xqute-example
seq 500 | awk '{ print ($1 % 50 ? "echo input " $1 " | sha256sum" : "echo input " $1 " is unlucky >&2; exit 3") }' \
    | "$xqute" run - --forks 8 --workdir .xqute-example \
    || echo "(xqute run exited $?: 10 jobs failed, on purpose)"
"$xqute" status .xqute-example --only failed --lines 1
