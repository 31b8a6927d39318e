#!/usr/bin/env bash
# Object stores on loopback for the cloud-workdir tests (s3://, gs://, az://).
#
#   bash scripts/stores.sh start|stop|status|env
#
# start: installs (pip) moto[s3] flask flask-cors gcp-storage-emulator panpath[all]
#        and (npm) azurite if missing, starts
#          S3    moto_server                         127.0.0.1:$S3_PORT    (5000)
#          GCS   gcp-storage-emulator (in memory)    127.0.0.1:$GCS_PORT   (9023)
#          Azure azurite-blob (in memory)            127.0.0.1:$AZURE_PORT (10000)
#        and creates the bucket/container "$BUCKET" in each through the SDKs.
#        The GCS emulator is started through scripts/gcs_emulator.py, which patches
#        its crash on empty uploads (see that file).  Idempotent.
# stop:  stops the three daemons it started (pid files); their data was in memory.
# status: exit 0 when all three answer and the bucket exists in each.
# env:   endpoint, credential and bucket variables for clients and tests.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR=${XQUTE_INFRA_DIR:-/tmp/xqute-infra}/stores
PYTHON=${PYTHON:-python3}
HOST=127.0.0.1
S3_PORT=${XQUTE_STORES_S3_PORT:-5000}
GCS_PORT=${XQUTE_STORES_GCS_PORT:-9023}
AZURE_PORT=${XQUTE_STORES_AZURE_PORT:-10000}
BUCKET=${XQUTE_STORES_BUCKET:-xqute-test}
# Azurite's documented development account (public, not a secret).
AZURE_ACCOUNT=devstoreaccount1
AZURE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
AZURE_CONN="DefaultEndpointsProtocol=http;AccountName=$AZURE_ACCOUNT;AccountKey=$AZURE_KEY;BlobEndpoint=http://$HOST:$AZURE_PORT/$AZURE_ACCOUNT;"

say() { echo "stores.sh: $*" >&2; }

print_env() {
    echo "export AWS_ENDPOINT_URL=http://$HOST:$S3_PORT"
    echo "export AWS_ACCESS_KEY_ID=xqute-test"
    echo "export AWS_SECRET_ACCESS_KEY=xqute-test"
    echo "export AWS_DEFAULT_REGION=us-east-1"
    echo "export STORAGE_EMULATOR_HOST=http://$HOST:$GCS_PORT"
    # Single quotes: the value has ';' and no quote of its own.
    echo "export AZURE_STORAGE_CONNECTION_STRING='$AZURE_CONN'"
    echo "export XQUTE_TEST_BUCKET=$BUCKET"
}

daemon_pid() {
    # $1: daemon name; prints its pid if our pid file names a live process.
    local pid
    [ -f "$STATE_DIR/$1.pid" ] || return 1
    pid=$(cat "$STATE_DIR/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

port_answers() {
    # $1: port. Any HTTP answer (even an error status) means the server is up.
    curl -s -o /dev/null --max-time 3 "http://$HOST:$1/" 2>/dev/null
}

install_packages() {
    if ! "$PYTHON" -c 'import moto, flask, flask_cors, gcp_storage_emulator, panpath, boto3, aioboto3, google.cloud.storage, gcloud.aio.storage, azure.storage.blob, azure.storage.blob.aio' \
        >/dev/null 2>&1; then
        say "installing Python packages (moto[s3] flask flask-cors gcp-storage-emulator panpath[all])"
        "$PYTHON" -m pip install -q 'moto[s3]' flask flask-cors gcp-storage-emulator 'panpath[all]' \
            >"$STATE_DIR/pip.log" 2>&1 || {
            echo "stores.sh: pip install failed, see $STATE_DIR/pip.log"
            exit 1
        }
    fi
    if ! command -v azurite-blob >/dev/null 2>&1; then
        command -v npm >/dev/null 2>&1 || {
            echo "stores.sh: cannot install azurite: npm is not installed (apt-get install npm)"
            exit 1
        }
        say "installing azurite (npm)"
        npm install -g --no-audit --no-fund azurite >"$STATE_DIR/npm.log" 2>&1 || {
            echo "stores.sh: npm install -g azurite failed, see $STATE_DIR/npm.log"
            exit 1
        }
    fi
}

start_daemon() {
    # $1: name, $2: port, rest: command line.  setsid: outlives this script.
    local name=$1 port=$2
    shift 2
    if daemon_pid "$name" >/dev/null && port_answers "$port"; then return 0; fi
    if pid=$(daemon_pid "$name"); then kill "$pid" 2>/dev/null || true; fi
    if port_answers "$port"; then
        echo "stores.sh: port $port is taken by a process this script did not start ($name)"
        exit 1
    fi
    # From the state dir: azurite keeps its workspace in the current directory.
    # (9>&-: the daemon must not hold the start lock)
    (cd "$STATE_DIR" && exec setsid "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null 9>&-) &
    echo $! >"$STATE_DIR/$name.pid"
}

wait_daemon() {
    local name=$1 port=$2
    for _ in $(seq 1 300); do
        port_answers "$port" && return 0
        daemon_pid "$name" >/dev/null || break
        sleep 0.1
    done
    echo "stores.sh: $name did not answer on $HOST:$port, see $STATE_DIR/$name.log"
    exit 1
}

# Creates (start) or checks (status) the bucket in each store through its SDK.
buckets() {
    eval "$(print_env)"
    "$PYTHON" - "$1" <<'EOF'
import os
import sys

create = sys.argv[1] == "create"
bucket = os.environ["XQUTE_TEST_BUCKET"]

import boto3
from botocore.exceptions import ClientError

s3 = boto3.client("s3")
try:
    s3.head_bucket(Bucket=bucket)
except ClientError:
    if not create:
        sys.exit(f"S3 bucket {bucket} does not exist")
    s3.create_bucket(Bucket=bucket)

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

gcs = storage.Client(project="xqute-test", credentials=AnonymousCredentials())
if gcs.lookup_bucket(bucket) is None:
    if not create:
        sys.exit(f"GCS bucket {bucket} does not exist")
    gcs.create_bucket(bucket)

from azure.storage.blob import BlobServiceClient

azure = BlobServiceClient.from_connection_string(
    os.environ["AZURE_STORAGE_CONNECTION_STRING"]
).get_container_client(bucket)
if not azure.exists():
    if not create:
        sys.exit(f"Azure container {bucket} does not exist")
    azure.create_container()
EOF
}

cmd_start() {
    mkdir -p "$STATE_DIR"
    # one start at a time (gbatch.sh starts the stores too): two at once each
    # launched an emulator, and the pid file named the one that lost the port
    exec 9>"$STATE_DIR/start.lock"
    flock 9
    command -v curl >/dev/null 2>&1 || { echo "stores.sh: curl is needed (apt-get install curl)"; exit 1; }
    command -v "$PYTHON" >/dev/null 2>&1 || { echo "stores.sh: no $PYTHON on this machine"; exit 1; }
    install_packages
    start_daemon s3 "$S3_PORT" "$PYTHON" -m moto.server -H "$HOST" -p "$S3_PORT"
    start_daemon gcs "$GCS_PORT" "$PYTHON" "$HERE/gcs_emulator.py" start \
        --host="$HOST" --port="$GCS_PORT" --in-memory
    start_daemon azure "$AZURE_PORT" azurite-blob --blobHost "$HOST" --blobPort "$AZURE_PORT" \
        --inMemoryPersistence --skipApiVersionCheck --loose --disableTelemetry
    wait_daemon s3 "$S3_PORT"
    wait_daemon gcs "$GCS_PORT"
    wait_daemon azure "$AZURE_PORT"
    buckets create >"$STATE_DIR/buckets.log" 2>&1 || {
        echo "stores.sh: creating bucket $BUCKET failed: $(tail -1 "$STATE_DIR/buckets.log")"
        exit 1
    }
    say "up: s3 :$S3_PORT, gcs :$GCS_PORT, azure :$AZURE_PORT, bucket $BUCKET"
}

cmd_stop() {
    local name pid
    for name in s3 gcs azure; do
        if pid=$(daemon_pid "$name"); then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE_DIR/$name.pid"
    done
    exit 0
}

cmd_status() {
    local name port
    for name in s3:$S3_PORT gcs:$GCS_PORT azure:$AZURE_PORT; do
        port=${name#*:}
        name=${name%%:*}
        daemon_pid "$name" >/dev/null || { echo "$name emulator is not running (stores.sh start)"; exit 1; }
        port_answers "$port" || { echo "$name emulator does not answer on $HOST:$port"; exit 1; }
    done
    local why
    why=$(buckets check 2>&1) || { echo "${why##*$'\n'}"; exit 1; }
    exit 0
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    *) echo "usage: bash scripts/stores.sh start|stop|status|env" >&2; exit 2 ;;
esac
