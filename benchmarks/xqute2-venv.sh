#!/usr/bin/env bash
# Make (once) a separate virtual environment holding xqute 2.2.1, the release our
# users run today, so benchmarks can compare against it in the same run.
# Prints the path of its python.  Never installs xqute 2.x into the project's env.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-xqute2"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import xqute, sys; sys.exit(xqute.__version__ != "2.2.1")' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q "xqute==2.2.1" >&2
fi
echo "$venv/bin/python"
