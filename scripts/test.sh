#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need,
# brings up the real parts this machine can run (Slurm, Grid Engine, sshd,
# podman, object stores, the Batch API for gcloud), runs every test, then the
# downstream stage (pipen's own suite and pipen pipelines, scripts/downstream.sh),
# then builds the docs strictly. Extra arguments go to pytest.
# Under CI=true a real part that cannot start makes its tests fail, not skip.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

python=$(bash scripts/venv.sh test) || { echo "could not set up .venv" >&2; exit 1; }

for part in slurm sge ssh podman stores gbatch; do
    script="scripts/$part.sh"
    [ -f "$script" ] || continue
    echo "== starting $part"
    if ! timeout 1200 bash "$script" start; then
        echo "== $part did not start here; its tests will skip (or fail under CI=true)"
    fi
done

echo "== tests"
"$python" -m pytest -q -p no:cacheprovider tests "$@"
status=$?

# pipen 1.2.4's own test suite and a real pipen pipeline on every scheduler,
# against this checkout (its own venv; see the script)
echo "== downstream"
bash scripts/downstream.sh || status=1

echo "== docs"
"$root/.venv/bin/mkdocs" build --strict --site-dir "$root/site" || status=1
exit $status
