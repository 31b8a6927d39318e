#!/usr/bin/env bash
# Two real SSH hosts for xqute's SSH scheduler tests and benchmark.
#
#   bash scripts/ssh.sh start|stop|status|env
#   bash scripts/ssh.sh host2-down|host2-unreachable   (for host-failure tests)
#
# start  installs Debian's openssh-server (and acl) if missing, creates a clean test
#        user (no start-up files: root's cost ~0.3 s a login here), keys and configs
#        under $XQUTE_SSH_STATE (default /tmp/xqute-infra/ssh), and starts, by hand:
#          host 1: sshd on 127.0.0.1:2222 in this machine's network namespace;
#          host 2: sshd on 10.200.0.2:22 in network namespace xqute-ssh-h2, joined
#                  to us by a veth pair 10.200.0.1/24 <-> 10.200.0.2/24, with its own
#                  host name (UTS namespace), process ids (pid namespace: `ps` and
#                  pids there are its own) and host key.
#        Both hosts share this machine's file system, as a cluster's nodes share a
#        disk.  A shared directory (default ACLs give the test user rw on whatever
#        root creates in it) holds job workdirs.  Idempotent; returns once both
#        hosts accept a key login.
# stop   kills the processes of host 2's namespaces and host 1's sshd (pid file),
#        deletes the namespace, the veth pair, the test user and the state dir.
# status exit 0 when both hosts accept a key login; else one line why.  Fast.
# env    export lines for clients and tests (key, user, known_hosts, client config,
#        host addresses, ports, aliases and the names jobs see from `hostname`).
# host2-down        host 2 "crashes": every process in its namespace (sshd and the
#                   jobs it started) is killed; connections are then refused.
# host2-unreachable host 2 drops off the network (its end of the link goes down):
#                   connections time out instead of being refused.
#        `start` brings host 2 back after either.
set -uo pipefail

STATE=${XQUTE_SSH_STATE:-/tmp/xqute-infra/ssh}
TEST_USER=xqute-ssh
USER_MARK="xqute ssh test user"
CLIENT_DIR=$STATE/client
CLIENT_KEY=$CLIENT_DIR/id_ed25519
KNOWN_HOSTS=$CLIENT_DIR/known_hosts
CLIENT_CONFIG=$CLIENT_DIR/ssh_config
AUTHORIZED_KEYS=$STATE/authorized_keys
SHARED_DIR=$STATE/shared
HOME_DIR=$STATE/home

H1_ADDR=127.0.0.1
H1_PORT=2222
H1_ALIAS=xqute-h1
H2_ADDR=10.200.0.2
H2_PORT=22
H2_ALIAS=xqute-h2
H2_HOSTNAME=xqute-h2
NETNS=xqute-ssh-h2
VETH_OUT=xqssh-h1      # our end, 10.200.0.1/24
VETH_IN=xqssh-h2       # host 2's end, 10.200.0.2/24
OUT_CIDR=10.200.0.1/24
IN_CIDR=10.200.0.2/24

say() { echo "ssh.sh: $*" >&2; }
die() { echo "ssh.sh: $*"; exit 1; }

host_dir() { echo "$STATE/$1"; }   # h1 | h2

# ---------------------------------------------------------------- pid files ---
# Host 1's sshd counts as ours only when our pid file names a live process whose
# command line still names our config file (guards against pid reuse).  Host 2's
# sshd is the first process (pid 1) of its own pid namespace, so it has no useful
# pid file: it is the process in host 2's network namespace running our config.
sshd_pid() { # h1|h2 -> prints pid (as this machine sees it)
    local dir pid
    dir=$(host_dir "$1")
    if [ "$1" = h2 ]; then
        netns_exists || return 1
        for pid in $(ip netns pids "$NETNS" 2>/dev/null); do
            # "sshd: /usr/sbin/sshd ... [listener]" once it is up (not unshare's sh -c)
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
                | grep -E "^(sshd: )?/usr/sbin/sshd -D -f $dir/sshd_config" >/dev/null \
                && { echo "$pid"; return 0; }
        done
        return 1
    fi
    [ -s "$dir/sshd.pid" ] || return 1
    pid=$(tr -dc '0-9' <"$dir/sshd.pid")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -F -- "$dir/sshd_config" >/dev/null || return 1
    echo "$pid"
}

stop_sshd() { # h1 (host 2 goes with its namespace's processes)
    local pid i
    pid=$(sshd_pid "$1") || { rm -f "$(host_dir "$1")/sshd.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$(host_dir "$1")/sshd.pid"
}

netns_exists() { ip netns list 2>/dev/null | grep -w -- "$NETNS" >/dev/null; }

kill_netns_processes() {
    # Everything in host 2's namespaces was started by us (its sshd is pid 1 of
    # its pid namespace; the rest are its sessions and their jobs).
    local pids i
    netns_exists || return 0
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(ip netns pids "$NETNS" 2>/dev/null | tr '\n' ' ')
        [ -n "${pids// /}" ] || return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
        sleep 0.1
    done
}

# ---------------------------------------------------------------- install ---
install_packages() {
    local missing=()
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v setfacl >/dev/null 2>&1 || missing+=(acl)
    command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "cannot install ${missing[*]}: no apt-get on this machine"
    say "installing ${missing[*]}"
    # openssh-server's post-install script would start the system's own sshd on
    # port 22 where no policy forbids it: forbid it for the time of the install
    # (we start our own sshds by hand).
    local policy=/usr/sbin/policy-rc.d own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# written by xqute scripts/ssh.sh during an install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    # --no-install-recommends: xauth, ncurses-term etc. are not needed here.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900) ok=1
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >"$STATE/apt.log" 2>&1 || {
        "${apt[@]}" update >>"$STATE/apt.log" 2>&1
        "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1
    } || ok=
    [ -n "$own_policy" ] && rm -f "$policy"
    [ -n "$ok" ] || die "apt-get install ${missing[*]} failed, see $STATE/apt.log"
}

# ------------------------------------------------------------- user, keys ---
ensure_user() {
    if ! getent passwd "$TEST_USER" >/dev/null; then
        useradd --comment "$USER_MARK" --home-dir "$HOME_DIR" --no-create-home \
            --shell /bin/bash --user-group "$TEST_USER" || die "useradd $TEST_USER failed"
    fi
    # With `UsePAM no`, sshd refuses a locked ('!') account even for keys; '*'
    # means "no password" without locking.
    usermod --password '*' "$TEST_USER" >/dev/null 2>&1
    mkdir -p "$HOME_DIR"
    chown "$TEST_USER:" "$HOME_DIR"
    chmod 755 "$HOME_DIR"
}

ensure_keys() {
    mkdir -p "$CLIENT_DIR" "$(host_dir h1)" "$(host_dir h2)"
    chmod 700 "$CLIENT_DIR"
    [ -s "$CLIENT_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C "xqute-ssh-client" -f "$CLIENT_KEY" \
        || die "ssh-keygen (client key) failed"
    local h
    for h in h1 h2; do
        [ -s "$(host_dir $h)/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' \
            -C "xqute-ssh-$h" -f "$(host_dir $h)/ssh_host_ed25519_key" \
            || die "ssh-keygen (host key $h) failed"
    done
    cp "$CLIENT_KEY.pub" "$AUTHORIZED_KEYS"
    chmod 644 "$AUTHORIZED_KEYS"
    # known_hosts as ssh looks entries up: [addr]:port, or plain addr on port 22.
    {
        echo "[$H1_ADDR]:$H1_PORT $(cut -d' ' -f1,2 "$(host_dir h1)/ssh_host_ed25519_key.pub")"
        echo "$H2_ADDR $(cut -d' ' -f1,2 "$(host_dir h2)/ssh_host_ed25519_key.pub")"
    } >"$KNOWN_HOSTS"
    chmod 644 "$KNOWN_HOSTS"
}

write_configs() {
    local h addr port
    for h in h1 h2; do
        if [ $h = h1 ]; then addr=$H1_ADDR port=$H1_PORT; else addr=$H2_ADDR port=$H2_PORT; fi
        cat >"$(host_dir $h)/sshd_config" <<EOF
# written by xqute scripts/ssh.sh: test host $h
Port $port
ListenAddress $addr
HostKey $(host_dir $h)/ssh_host_ed25519_key
PidFile $( [ $h = h1 ] && echo "$(host_dir $h)/sshd.pid" || echo none)
AuthorizedKeysFile $AUTHORIZED_KEYS
AllowUsers $TEST_USER
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# keys and configs live under /tmp
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
# many parallel sessions (multiplexed, and unmultiplexed for xqute 2.x)
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
EOF
    done
    cat >"$CLIENT_CONFIG" <<EOF
# written by xqute scripts/ssh.sh: use with \`ssh -F $CLIENT_CONFIG <alias>\`
Host $H1_ALIAS
    HostName $H1_ADDR
    Port $H1_PORT
Host $H2_ALIAS
    HostName $H2_ADDR
    Port $H2_PORT
Host *
    User $TEST_USER
    IdentityFile $CLIENT_KEY
    IdentitiesOnly yes
    UserKnownHostsFile $KNOWN_HOSTS
    GlobalKnownHostsFile /dev/null
    BatchMode yes
    ConnectTimeout 5
EOF
    # A client wrapper that reads our config, for programs that take an ssh binary.
    cat >"$CLIENT_DIR/ssh" <<EOF
#!/bin/sh
# ssh with the xqute test hosts' client config (written by scripts/ssh.sh)
exec ssh -F '$CLIENT_CONFIG' "\$@"
EOF
    chmod 755 "$CLIENT_DIR/ssh"
    chmod 644 "$CLIENT_CONFIG"
}

ensure_shared_dir() {
    # Job workdirs go here.  The manager (root) creates metadirs and files in it,
    # and jobs (the test user) write their output there: default ACLs give the test
    # user rwx on everything created below, as a shared disk with one user would.
    mkdir -p "$SHARED_DIR"
    chmod 1777 "$SHARED_DIR"
    setfacl -m "u:$TEST_USER:rwx" -m "d:u:$TEST_USER:rwx" -m "d:u::rwx" \
        -m "d:g::rwx" -m "d:o::rx" -m "d:m::rwx" "$SHARED_DIR" \
        || die "setfacl on $SHARED_DIR failed (no ACL support on this file system?)"
}

# ---------------------------------------------------------------- network ---
ensure_netns() {
    netns_exists || ip netns add "$NETNS" || die "ip netns add $NETNS failed"
    if ! ip link show "$VETH_OUT" >/dev/null 2>&1; then
        ip link add "$VETH_OUT" type veth peer name "$VETH_IN" netns "$NETNS" \
            || die "creating veth pair $VETH_OUT/$VETH_IN failed"
    fi
    ip addr show dev "$VETH_OUT" | grep -F "$OUT_CIDR" >/dev/null || ip addr add "$OUT_CIDR" dev "$VETH_OUT"
    ip link set "$VETH_OUT" up
    ip netns exec "$NETNS" sh -c "
        ip addr show dev $VETH_IN | grep -F $IN_CIDR >/dev/null || ip addr add $IN_CIDR dev $VETH_IN
        ip link set lo up && ip link set $VETH_IN up" || die "configuring $VETH_IN in $NETNS failed"
}

remove_netns() {
    kill_netns_processes
    ip link show "$VETH_OUT" >/dev/null 2>&1 && ip link del "$VETH_OUT" 2>/dev/null
    netns_exists && ip netns del "$NETNS" 2>/dev/null
    return 0
}

# ------------------------------------------------------------------ sshds ---
start_sshd() { # h1|h2
    local h=$1 dir
    dir=$(host_dir "$h")
    sshd_pid "$h" >/dev/null && return 0
    mkdir -p /run/sshd && chmod 755 /run/sshd   # sshd's privilege-separation dir
    /usr/sbin/sshd -t -f "$dir/sshd_config" || die "sshd -t rejects $dir/sshd_config"
    if [ "$h" = h1 ]; then
        /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" || die "sshd ($h) did not start, see $dir/sshd.log"
    else
        # its own network, host name and process ids (sshd -D stays pid 1 there:
        # when it goes, everything on host 2 goes, as on a machine that crashed)
        setsid ip netns exec "$NETNS" unshare --uts --pid --fork --mount-proc sh -c \
            "hostname $H2_HOSTNAME && exec /usr/sbin/sshd -D -f '$dir/sshd_config' -E '$dir/sshd.log'" \
            </dev/null >/dev/null 2>>"$dir/sshd.log" &
        local i
        for i in $(seq 1 50); do
            sshd_pid h2 >/dev/null && return 0
            sleep 0.1
        done
        die "sshd ($h) did not start in $NETNS, see $dir/sshd.log"
    fi
}

client_ok() { # alias -> 0 when a key login runs a command there
    timeout 15 ssh -F "$CLIENT_CONFIG" -o ConnectTimeout=3 "$1" true >/dev/null 2>&1
}

wait_usable() {
    local i alias
    for alias in $H1_ALIAS $H2_ALIAS; do
        for i in $(seq 1 50); do
            client_ok "$alias" && break
            sleep 0.2
        done
        client_ok "$alias" || die "$alias does not accept a key login (see $STATE/h*/sshd.log)"
    done
}

# ------------------------------------------------------------------- verbs ---
do_start() {
    [ "$(id -u)" = 0 ] || die "needs root (sshd on a private port, network namespaces, a test user)"
    command -v ip >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1 \
        || die "no ip(8) and no apt-get on this machine"
    mkdir -p "$STATE"
    install_packages
    ensure_user
    ensure_keys
    write_configs
    ensure_shared_dir
    ensure_netns
    start_sshd h1
    start_sshd h2
    wait_usable
    say "up: $H1_ALIAS=$H1_ADDR:$H1_PORT, $H2_ALIAS=$H2_ADDR:$H2_PORT ($NETNS)"
}

do_stop() {
    [ -d "$STATE" ] || netns_exists || return 0
    remove_netns
    stop_sshd h1
    # The user only if we made it (its comment is our mark); files it wrote go
    # with the state dir.
    if getent passwd "$TEST_USER" | cut -d: -f5 | grep -xF "$USER_MARK" >/dev/null; then
        userdel "$TEST_USER" >/dev/null 2>&1 || say "userdel $TEST_USER failed (processes left?)"
    fi
    rm -rf "$STATE"
    return 0
}

do_status() {
    [ -x /usr/sbin/sshd ] || { echo "ssh.sh: openssh-server is not installed"; return 1; }
    [ -s "$CLIENT_CONFIG" ] || { echo "ssh.sh: not started (no $CLIENT_CONFIG)"; return 1; }
    sshd_pid h1 >/dev/null || { echo "ssh.sh: sshd of host 1 ($H1_ADDR:$H1_PORT) is not running"; return 1; }
    netns_exists || { echo "ssh.sh: network namespace $NETNS is missing"; return 1; }
    sshd_pid h2 >/dev/null || { echo "ssh.sh: sshd of host 2 ($H2_ADDR:$H2_PORT) is not running"; return 1; }
    client_ok $H1_ALIAS || { echo "ssh.sh: host 1 ($H1_ADDR:$H1_PORT) refuses a key login"; return 1; }
    client_ok $H2_ALIAS || { echo "ssh.sh: host 2 ($H2_ADDR:$H2_PORT) refuses a key login"; return 1; }
    return 0
}

do_env() {
    cat <<EOF
export XQUTE_SSH_USER=$TEST_USER
export XQUTE_SSH_KEY=$CLIENT_KEY
export XQUTE_SSH_KNOWN_HOSTS=$KNOWN_HOSTS
export XQUTE_SSH_CONFIG=$CLIENT_CONFIG
export XQUTE_SSH_CLIENT=$CLIENT_DIR/ssh
export XQUTE_SSH_SHARED_DIR=$SHARED_DIR
export XQUTE_SSH_HOST1=$H1_ADDR
export XQUTE_SSH_PORT1=$H1_PORT
export XQUTE_SSH_ALIAS1=$H1_ALIAS
export XQUTE_SSH_HOSTNAME1=$(hostname)
export XQUTE_SSH_HOST2=$H2_ADDR
export XQUTE_SSH_PORT2=$H2_PORT
export XQUTE_SSH_ALIAS2=$H2_ALIAS
export XQUTE_SSH_HOSTNAME2=$H2_HOSTNAME
export XQUTE_SSH_NETNS2=$NETNS
EOF
}

do_host2_down() {
    kill_netns_processes
}

do_host2_unreachable() {
    netns_exists || die "host 2 is not up"
    ip netns exec "$NETNS" ip link set "$VETH_IN" down
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    env) do_env ;;
    host2-down) do_host2_down ;;
    host2-unreachable) do_host2_unreachable ;;
    *) echo "usage: bash $0 start|stop|status|env|host2-down|host2-unreachable" >&2; exit 2 ;;
esac
