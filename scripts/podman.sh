#!/usr/bin/env bash
# Real container runtime for the container scheduler's tests and benchmark.
#
#   bash scripts/podman.sh start|stop|status|env
#
# start: installs Debian's podman (with runc, iptables, netavark) and busybox-static,
#        points podman at runc with ulimits inside this machine's hard limits
#        (crun refuses the hybrid cgroups here, and podman's default ulimits exceed
#        the hard ones), builds a small local image (busybox + Debian's bash; no
#        registry is reachable), and starts `podman system service` so the docker
#        CLI works with DOCKER_HOST.  Idempotent.
# stop:  stops the service it started (pid file) and removes the image it built.
# status: exit 0 when podman runs containers of the image and the socket answers.
# env:   DOCKER_HOST and the image name for clients and tests.
set -euo pipefail

STATE_DIR=${XQUTE_INFRA_DIR:-/tmp/xqute-infra}/podman
PID_FILE=$STATE_DIR/service.pid
LOG_FILE=$STATE_DIR/service.log
ROOTFS=$STATE_DIR/rootfs
SOCKET_PATH=/run/podman/podman.sock
DOCKER_HOST_URL=unix://$SOCKET_PATH
# bump the tag when the recipe in build_image changes, so start rebuilds it
IMAGE=localhost/xqute-test-bash:v2
CONF=/etc/containers/containers.conf
CONF_MARK="# written by xqute scripts/podman.sh"

say() { echo "podman.sh: $*" >&2; }

service_pid() {
    # The pid from our pid file, if that process is still our service.
    local pid
    [ -f "$PID_FILE" ] || return 1
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "system service" || return 1
    echo "$pid"
}

socket_answers() {
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s --max-time 5 --unix-socket "$SOCKET_PATH" http://d/_ping 2>/dev/null)" = OK ]
    else
        timeout 10 podman --url "$DOCKER_HOST_URL" version >/dev/null 2>&1
    fi
}

install_packages() {
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "podman.sh: cannot install ${missing[*]}: no apt-get on this machine"
        exit 1
    fi
    say "installing ${missing[*]}"
    # --no-install-recommends: the recommended crun does not work here, and the
    # rest (slirp4netns, fuse-overlayfs, ...) is only for rootless use.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
        --no-install-recommends podman runc iptables netavark busybox-static \
        >"$STATE_DIR/apt.log" 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update \
            >>"$STATE_DIR/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
            --no-install-recommends podman runc iptables netavark busybox-static \
            >>"$STATE_DIR/apt.log" 2>&1
    } || { echo "podman.sh: apt-get install failed, see $STATE_DIR/apt.log"; exit 1; }
}

hard_limit() {
    # $1: ulimit flag; prints the hard limit, capped at $2 ("unlimited" -> $2).
    local value
    value=$(ulimit -H "$1")
    if [ "$value" = unlimited ] || [ "$value" -gt "$2" ]; then value=$2; fi
    echo "$value"
}

write_config() {
    local nofile nproc wanted
    nofile=$(hard_limit -n 1048576)
    nproc=$(hard_limit -u 16384)
    wanted="$CONF_MARK
[containers]
# at or below the hard limits, or runc fails to set them
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]

[engine]
# crun refuses this machine's hybrid cgroup v1/v2 layout
runtime = \"runc\"

[network]
network_backend = \"netavark\""
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$wanted" ]; then return 0; fi
    if [ -f "$CONF" ] && ! grep -qF "$CONF_MARK" "$CONF"; then
        cp -p "$CONF" "$STATE_DIR/containers.conf.orig"
    fi
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$wanted" >"$CONF"
}

build_image() {
    podman image exists "$IMAGE" && return 0
    say "building $IMAGE"
    local lib
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"/{bin,etc,tmp,root,lib64,lib/x86_64-linux-gnu,usr/bin}
    cp /bin/busybox "$ROOTFS/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$ROOTFS/bin/$applet" ] || ln -s busybox "$ROOTFS/bin/$applet"
    done
    # The job wrapper is a bash script: Debian's bash, and GNU timeout (busybox's
    # exits 143, not 124, on a timeout), with the libraries they link.
    local tool
    for tool in /bin/bash /usr/bin/timeout; do
        rm -f "$ROOTFS/bin/$(basename "$tool")"
        cp "$tool" "$ROOTFS/bin/$(basename "$tool")"
        for lib in $(ldd "$tool" | grep -o '/[^ ]*'); do
            mkdir -p "$ROOTFS$(dirname "$lib")"
            cp -L "$lib" "$ROOTFS$lib"
        done
    done
    ln -s /bin/bash "$ROOTFS/usr/bin/bash"
    ln -s /bin/env "$ROOTFS/usr/bin/env"
    echo 'root:x:0:0:root:/root:/bin/bash' >"$ROOTFS/etc/passwd"
    echo 'root:x:0:' >"$ROOTFS/etc/group"
    chmod 1777 "$ROOTFS/tmp"
    tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" \
        >"$STATE_DIR/import.log" 2>&1 || {
        echo "podman.sh: podman import failed, see $STATE_DIR/import.log"
        exit 1
    }
    rm -rf "$ROOTFS"
}

start_service() {
    service_pid >/dev/null && socket_answers && return 0
    if pid=$(service_pid); then kill "$pid" 2>/dev/null || true; fi
    mkdir -p "$(dirname "$SOCKET_PATH")"
    rm -f "$SOCKET_PATH"
    # --time=0: never exit on idle; setsid: outlives this script and its session.
    setsid podman system service --time=0 "$DOCKER_HOST_URL" \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 100); do
        socket_answers && return 0
        kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break
        sleep 0.1
    done
    echo "podman.sh: podman system service did not answer on $SOCKET_PATH, see $LOG_FILE"
    exit 1
}

smoke_test() {
    local out
    out=$(podman run --rm --network none "$IMAGE" /bin/bash -c 'echo "ok $BASH_VERSION"' 2>&1) || {
        echo "podman.sh: podman run of $IMAGE failed: $(echo "$out" | tail -1)"
        exit 1
    }
}

cmd_start() {
    if [ "$(id -u)" != 0 ]; then
        echo "podman.sh: needs root (rootful podman with runc; not root here)"
        exit 1
    fi
    mkdir -p "$STATE_DIR"
    install_packages
    write_config
    build_image
    smoke_test
    start_service
    say "up: DOCKER_HOST=$DOCKER_HOST_URL image $IMAGE"
}

cmd_stop() {
    local pid
    if pid=$(service_pid); then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    if command -v podman >/dev/null 2>&1 && podman image exists "$IMAGE" 2>/dev/null; then
        # -f also removes containers left from this image (tests' leftovers).
        podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    fi
    rm -rf "$ROOTFS"
    exit 0
}

cmd_status() {
    command -v podman >/dev/null 2>&1 || { echo "podman is not installed"; exit 1; }
    grep -qF "$CONF_MARK" "$CONF" 2>/dev/null || { echo "$CONF is not configured for runc"; exit 1; }
    podman image exists "$IMAGE" 2>/dev/null || { echo "image $IMAGE is not built"; exit 1; }
    service_pid >/dev/null || { echo "podman system service is not running"; exit 1; }
    socket_answers || { echo "podman socket $SOCKET_PATH does not answer"; exit 1; }
    exit 0
}

cmd_env() {
    echo "export DOCKER_HOST=$DOCKER_HOST_URL"
    echo "export XQUTE_TEST_IMAGE=$IMAGE"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
