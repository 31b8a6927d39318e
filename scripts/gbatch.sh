#!/usr/bin/env bash
# Google Cloud Batch for the gbatch scheduler's tests: the real `gcloud` CLI pointed
# at a fake of the Batch REST API on loopback (scripts/fake_batch_api.py), whose
# jobs really run on this machine with their GCS volumes mirrored from the GCS
# emulator of scripts/stores.sh.
#
#   bash scripts/gbatch.sh start|stop|status|env
#
# start: starts the stores (scripts/stores.sh start), writes a gcloud config dir
#        and an access-token file, starts the fake API on 127.0.0.1:$PORT (18089)
#        and checks that `gcloud batch jobs list` gets through.  Idempotent.
# stop:  stops the fake API it started (pid file); leaves the stores running
#        (stop them with scripts/stores.sh stop).
# status: exit 0 when the fake answers and gcloud is installed.
# env:   the CLOUDSDK_* variables that point gcloud at the fake, the stores' env,
#        and FAKE_BATCH_API (its address, for tests reading /fake/stats).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR=${XQUTE_INFRA_DIR:-/tmp/xqute-infra}/gbatch
PYTHON=${PYTHON:-python3}
HOST=127.0.0.1
PORT=${XQUTE_GBATCH_PORT:-18089}
PROJECT=xqute-test
LOCATION=us-central1
PID_FILE=$STATE_DIR/fake_batch_api.pid
LOG_FILE=$STATE_DIR/fake_batch_api.log

say() { echo "gbatch.sh: $*" >&2; }

print_env() {
    echo "export CLOUDSDK_CONFIG=$STATE_DIR/gcloud-config"
    echo "export CLOUDSDK_API_ENDPOINT_OVERRIDES_BATCH=http://$HOST:$PORT/"
    echo "export CLOUDSDK_AUTH_ACCESS_TOKEN_FILE=$STATE_DIR/access-token"
    echo "export CLOUDSDK_CORE_PROJECT=$PROJECT"
    echo "export CLOUDSDK_BATCH_LOCATION=$LOCATION"
    echo "export CLOUDSDK_CORE_DISABLE_PROMPTS=1"
    echo "export CLOUDSDK_CORE_CHECK_GCE_METADATA=false"
    # Each of these would otherwise cost a gcloud call time or a network try.
    echo "export CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=true"
    echo "export CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=true"
    echo "export CLOUDSDK_SURVEY_DISABLE_PROMPTS=true"
    echo "export FAKE_BATCH_API=http://$HOST:$PORT"
    bash "$HERE/stores.sh" env
}

fake_pid() {
    local pid
    [ -f "$PID_FILE" ] || return 1
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

fake_answers() {
    curl -s -o /dev/null --max-time 3 "http://$HOST:$PORT/fake/stats" 2>/dev/null
}

cmd_start() {
    mkdir -p "$STATE_DIR/gcloud-config"
    command -v gcloud >/dev/null 2>&1 || {
        echo "gbatch.sh: the gcloud CLI is not installed (Google Cloud SDK; apt package google-cloud-cli)"
        exit 1
    }
    command -v unshare >/dev/null 2>&1 || { echo "gbatch.sh: unshare (util-linux) is needed"; exit 1; }
    if [ "$(id -u)" != 0 ]; then
        echo "gbatch.sh: needs root (the fake runs tasks in mount namespaces with bind mounts)"
        exit 1
    fi
    bash "$HERE/stores.sh" start
    echo "fake-token-for-loopback" >"$STATE_DIR/access-token"
    if ! { fake_pid >/dev/null && fake_answers; }; then
        if pid=$(fake_pid); then kill "$pid" 2>/dev/null || true; fi
        if fake_answers; then
            echo "gbatch.sh: port $PORT is taken by a process this script did not start"
            exit 1
        fi
        eval "$(bash "$HERE/stores.sh" env)"
        (exec setsid "$PYTHON" "$HERE/fake_batch_api.py" --host "$HOST" --port "$PORT" \
            --state-dir "$STATE_DIR" ${XQUTE_GBATCH_VERBOSE:+--verbose} >"$LOG_FILE" 2>&1 </dev/null) &
        echo $! >"$PID_FILE"
        for _ in $(seq 1 100); do
            fake_answers && break
            fake_pid >/dev/null || break
            sleep 0.1
        done
        fake_answers || { echo "gbatch.sh: the fake Batch API did not answer, see $LOG_FILE"; exit 1; }
    fi
    # gcloud's first call in a fresh config dir writes its files (slower); do it now.
    eval "$(print_env)"
    local out
    out=$(gcloud batch jobs list --limit 1 --format='value(name)' 2>&1) || {
        echo "gbatch.sh: gcloud batch jobs list against the fake failed: $(echo "$out" | tail -1)"
        exit 1
    }
    say "up: fake Batch API http://$HOST:$PORT/ (project $PROJECT, location $LOCATION)"
}

cmd_stop() {
    local pid
    if pid=$(fake_pid); then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    rm -rf "$STATE_DIR/mirrors" "$STATE_DIR/tasks"
    exit 0
}

cmd_status() {
    command -v gcloud >/dev/null 2>&1 || { echo "gcloud is not installed"; exit 1; }
    fake_pid >/dev/null || { echo "the fake Batch API is not running (gbatch.sh start)"; exit 1; }
    fake_answers || { echo "the fake Batch API does not answer on $HOST:$PORT"; exit 1; }
    [ -f "$STATE_DIR/access-token" ] || { echo "no gcloud access-token file (gbatch.sh start)"; exit 1; }
    local why
    why=$(bash "$HERE/stores.sh" status 2>&1) || { echo "stores: $why"; exit 1; }
    exit 0
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    *) echo "usage: bash scripts/gbatch.sh start|stop|status|env" >&2; exit 2 ;;
esac
