#!/usr/bin/env bash
# Bring up a one-host Grid Engine (Debian's gridengine 8.1.9: sge_qmaster and
# sge_execd) on this machine for xqute's tests and benchmarks.
#
#   bash scripts/sge.sh start    install if needed, configure, start, wait until usable
#   bash scripts/sge.sh stop     stop the daemons this script started (by pid file)
#   bash scripts/sge.sh status   exit 0 when a job can be submitted, else say why
#   bash scripts/sge.sh env      export lines clients need (SGE_ROOT, SGE_CELL)
#
# Facts this relies on (see shared infra notes): no systemd here, so daemons are
# started by hand; 127.0.0.1 resolves to a name other than `hostname`, so both
# names are made aliases or every qconf/qsub is refused; root's jobs need
# min_uid/min_gid 0; login_shells none keeps jobs from sourcing root's start-up
# files.  State, config files and logs live under $STATE.
set -uo pipefail

export SGE_ROOT=/var/lib/gridengine
export SGE_CELL=default
STATE=${XQUTE_SGE_STATE:-/tmp/xqute-infra/sge}
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOLDB=/var/spool/gridengine/spooldb
QMASTER_SPOOL=/var/spool/gridengine/qmaster
EXECD_SPOOL=/var/spool/gridengine/execd
QMASTER_PIDFILE=$STATE/sge_qmaster.pid
EXECD_PIDFILE=$STATE/sge_execd.pid
PACKAGES=(gridengine-master gridengine-exec gridengine-client)
HOST=$(hostname)
# Slots of all.q: more than the machine's cores, so many trivial jobs run at once
# and a benchmark measures the submission path, not the cores.  small.q (same
# host, SMALL_SLOTS slots) is for tests that need a job to wait in the queue;
# jobs that name no queue go to all.q first (seq_no, queue_sort_method seqno).
# MAX_AJ_TASKS (tasks per array job) is low on purpose: tests submit more jobs
# than that to check that xqute splits its arrays.
SLOTS=32
SMALL_SLOTS=2
MAX_AJ_TASKS=100
# Slots of the smp parallel environment, the one xqute's resources' cpus go
# to (`-pe smp N`, the SgeScheduler's pe_name): all on one host
# ($pe_slots), the queues' slots being the real cap.
SMP_SLOTS=999

say() { echo "sge.sh: $*" >&2; }
die() { echo "sge.sh: $*"; exit 1; }

# pid from a pid file if that process is alive and is the named program.
live_pid() {
    local pidfile=$1 prog=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc 0-9 <"$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$prog" ] || return 1
    echo "$pid"
}

packages_installed() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

install_packages() {
    packages_installed && return 0
    command -v apt-get >/dev/null || die "cannot install Grid Engine: no apt-get on this machine"
    # The cell is only created by the package's postinst when these are preseeded.
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginemaster string $HOST
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-client shared/gridengineconfig boolean true
gridengine-client shared/gridenginemaster string $HOST
EOF
    say "installing ${PACKAGES[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
            --no-install-recommends "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1; then
        # A stale package list is the usual cause: refresh once and retry.
        apt-get -o DPkg::Lock::Timeout=900 update >>"$STATE/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
            --no-install-recommends "${PACKAGES[@]}" >>"$STATE/apt.log" 2>&1 ||
            die "apt-get install ${PACKAGES[*]} failed (see $STATE/apt.log)"
    fi
}

# The cell (bootstrap file + berkeleydb spool) is made by the postinst only on a
# first install; re-create it if something removed it since.
ensure_cell() {
    if [ ! -s "$COMMON/bootstrap" ] || [ ! -e "$SPOOLDB/sge" ]; then
        say "creating the Grid Engine cell"
        install -d -o sgeadmin -g sgeadmin "$SGE_ROOT/$SGE_CELL" "$COMMON" "$SPOOLDB" \
            "$QMASTER_SPOOL" "$EXECD_SPOOL"
        install -o sgeadmin -g sgeadmin -m 644 /usr/share/gridengine/default-bootstrap "$COMMON/bootstrap"
        runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
            "$SGE_ROOT" "$SGE_CELL" "$SPOOLDB" sgeadmin >"$STATE/init_cluster.log" 2>&1 ||
            die "init_cluster failed (see $STATE/init_cluster.log)"
    fi
    # The daemons see this host as "localhost" (the name 127.0.0.1 resolves back
    # to) while clients say "$HOST": make them one host.
    local aliases="$HOST localhost"
    [ "$HOST" = localhost ] && aliases=localhost
    if [ "$(cat "$COMMON/host_aliases" 2>/dev/null)" != "$aliases" ]; then
        echo "$aliases" >"$COMMON/host_aliases"
    fi
    if [ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" != "$HOST" ]; then
        echo "$HOST" >"$COMMON/act_qmaster"
    fi
    chown sgeadmin:sgeadmin "$COMMON/host_aliases" "$COMMON/act_qmaster"
}

qmaster_answers() { qconf -sh >/dev/null 2>&1; }

start_qmaster() {
    if live_pid "$QMASTER_PIDFILE" sge_qmaster >/dev/null; then
        return 0
    fi
    # A qmaster this script did not start (e.g. left from another state dir) would
    # hold the port; adopt it only if its own pid file names a live qmaster.
    if live_pid "$QMASTER_SPOOL/qmaster.pid" sge_qmaster >/dev/null; then
        cp "$QMASTER_SPOOL/qmaster.pid" "$QMASTER_PIDFILE"
        return 0
    fi
    rm -f "$QMASTER_SPOOL/lock"
    # setsid: a session of its own, so that a kill of the starting shell's
    # process group (a tool ending its job) does not take the daemon down
    setsid -w /usr/sbin/sge_qmaster >>"$STATE/sge_qmaster.out" 2>&1 || die "sge_qmaster failed to start (see $QMASTER_SPOOL/messages)"
    local i
    for i in $(seq 1 100); do
        if live_pid "$QMASTER_SPOOL/qmaster.pid" sge_qmaster >/dev/null; then
            cp "$QMASTER_SPOOL/qmaster.pid" "$QMASTER_PIDFILE"
            return 0
        fi
        sleep 0.1
    done
    die "sge_qmaster did not write its pid file (see $QMASTER_SPOOL/messages)"
}

wait_qmaster() {
    local i
    for i in $(seq 1 150); do
        qmaster_answers && return 0
        sleep 0.2
    done
    die "sge_qmaster does not answer qconf (see $QMASTER_SPOOL/messages)"
}

# Apply a qconf "modify from file" only when the current value differs, so a
# second start does not churn the spool.
configure() {
    local conf=$STATE/conf
    mkdir -p "$conf"

    # Global configuration: the file must be named "global" for -Mconf.
    sed -e "s/^min_uid .*/min_uid 0/" \
        -e "s/^min_gid .*/min_gid 0/" \
        -e "s/^login_shells .*/login_shells none/" \
        -e "s/^shell_start_mode .*/shell_start_mode unix_behavior/" \
        -e "s/^load_report_time .*/load_report_time 00:00:10/" \
        -e "s/^max_aj_tasks .*/max_aj_tasks $MAX_AJ_TASKS/" \
        -e "s/^reporting_params .*/reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00/" \
        -e "/^conf_version/d" -e "/^#/d" \
        /usr/share/gridengine/default-configuration >"$conf/global"
    if ! qconf -sconf | tr -s ' \\\n' ' ' | grep -q "accounting_flush_time=00:00:00" ||
       ! qconf -sconf | grep -qE "^min_uid +0$" ||
       ! qconf -sconf | grep -qE "^login_shells +none$" ||
       ! qconf -sconf | grep -qE "^max_aj_tasks +$MAX_AJ_TASKS$"; then
        qconf -Mconf "$conf/global" >/dev/null || die "qconf -Mconf failed"
    fi

    # Scheduler: run every second so a trivial job starts at once; queues are
    # tried by seq_no (all.q before small.q) whatever their load.
    qconf -ssconf | sed -e "s/^schedule_interval .*/schedule_interval 0:0:1/" \
        -e "s/^queue_sort_method .*/queue_sort_method seqno/" \
        -e "s/^flush_submit_sec .*/flush_submit_sec 1/" \
        -e "s/^flush_finish_sec .*/flush_finish_sec 1/" \
        -e "s/^job_load_adjustments .*/job_load_adjustments NONE/" \
        -e "s/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/" >"$conf/sched"
    if ! qconf -ssconf | grep -qE "^schedule_interval +0:0:1$" ||
       ! qconf -ssconf | grep -qE "^job_load_adjustments +NONE$" ||
       ! qconf -ssconf | grep -qE "^queue_sort_method +seqno$"; then
        qconf -Msconf "$conf/sched" >/dev/null || die "qconf -Msconf failed"
    fi

    # This host submits jobs too.
    qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null 2>&1 ||
        die "qconf -as $HOST failed"

    # Parallel environments the default queue template names (and `-pe smp N`,
    # where xqute asks for resources' cpus), attached to both queues (pe_list).
    local pe pe_slots
    for pe in make smp mpi; do
        pe_slots=$SLOTS
        [ "$pe" = smp ] && pe_slots=$SMP_SLOTS
        cat >"$conf/pe_$pe" <<EOF
pe_name            $pe
slots              $pe_slots
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
        if ! qconf -sp "$pe" >/dev/null 2>&1; then
            qconf -Ap "$conf/pe_$pe" >/dev/null || die "qconf -Ap $pe failed"
        elif ! qconf -sp "$pe" | grep -qE "^slots +$pe_slots$" ||
             ! qconf -sp "$pe" | grep -qE "^allocation_rule +\\\$pe_slots$"; then
            qconf -Mp "$conf/pe_$pe" >/dev/null || die "qconf -Mp $pe failed"
        fi
    done

    # Execution host entry (execd would register itself, but the queue names it).
    qconf -se "$HOST" >/dev/null 2>&1 || {
        cat >"$conf/exechost" <<EOF
hostname              $HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
        qconf -Ae "$conf/exechost" >/dev/null || die "qconf -Ae $HOST failed"
    }

    # all.q on this host with $SLOTS slots, tried first; small.q with $SMALL_SLOTS.
    ensure_queue all.q 0 "$SLOTS"
    ensure_queue small.q 1 "$SMALL_SLOTS"
}

# A cluster queue on this host: name, seq_no, slots.  Its h_rt and h_vmem are
# INFINITY, so a job's own request is its limit, and Grid Engine enforces it
# (checked on 8.1.9): h_vmem is a setrlimit of each process's address space
# (times the job's slots; an allocation past it fails: Python raises
# MemoryError) and execd SIGKILLs a job whose processes together pass it; a
# job past its h_rt is SIGKILLed.  qacct records both kills as failed 37
# ("qmaster enforced h_rt, h_cpu, or h_vmem limit"), exit_status 137.  Added if missing, modified
# when a setting this script cares about differs.
ensure_queue() {
    local name=$1 seq_no=$2 slots=$3 file=$STATE/conf/$1
    cat >"$file" <<EOF
qname                 $name
hostlist              $HOST
seq_no                $seq_no
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               make smp mpi
rerun                 FALSE
slots                 $slots
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
    if ! qconf -sq "$name" >/dev/null 2>&1; then
        qconf -Aq "$file" >/dev/null || die "qconf -Aq $name failed"
    elif ! qconf -sq "$name" | grep -qE "^slots +$slots$" ||
         ! qconf -sq "$name" | grep -qE "^seq_no +$seq_no$" ||
         ! qconf -sq "$name" | grep -qE "^shell_start_mode +unix_behavior$" ||
         ! qconf -sq "$name" | grep -qE "^hostlist +$HOST$" ||
         ! qconf -sq "$name" | grep -qE "^pe_list +make smp mpi$" ||
         ! qconf -sq "$name" | grep -qE "^h_rt +INFINITY$" ||
         ! qconf -sq "$name" | grep -qE "^h_vmem +INFINITY$"; then
        qconf -Mq "$file" >/dev/null || die "qconf -Mq $name failed"
    fi
}

start_execd() {
    if live_pid "$EXECD_PIDFILE" sge_execd >/dev/null; then
        return 0
    fi
    local own
    for own in "$EXECD_SPOOL"/*/execd.pid; do
        if [ -e "$own" ] && live_pid "$own" sge_execd >/dev/null; then
            cp "$own" "$EXECD_PIDFILE"
            return 0
        fi
    done
    setsid -w /usr/sbin/sge_execd >>"$STATE/sge_execd.out" 2>&1 || die "sge_execd failed to start (see $STATE/sge_execd.out)"
    local i
    for i in $(seq 1 100); do
        for own in "$EXECD_SPOOL"/*/execd.pid; do
            if [ -e "$own" ] && live_pid "$own" sge_execd >/dev/null; then
                cp "$own" "$EXECD_PIDFILE"
                return 0
            fi
        done
        sleep 0.1
    done
    die "sge_execd did not write its pid file (see $EXECD_SPOOL/*/messages)"
}

# A queue instance (all.q@host) is usable once execd has reported in: its state
# column is empty (no "u" unknown, "a" alarm, "d" disabled, "E" error).
queue_state() { # queue name
    qstat -f -q "$1@$HOST" 2>/dev/null | awk -v q="$1@$HOST" '$1 == q { print ($6 == "" ? "ok" : $6) }'
}

wait_queue() { # queue name
    local i state
    for i in $(seq 1 300); do
        state=$(queue_state "$1")
        [ "$state" = ok ] && return 0
        case "$state" in
            *E*) qmod -c "$1@$HOST" >/dev/null 2>&1 ;;   # clear a stale error state
            *d*) qmod -e "$1@$HOST" >/dev/null 2>&1 ;;
        esac
        sleep 0.2
    done
    die "queue $1@$HOST is not usable (state: ${state:-missing})"
}

# Grid Engine needs this host's name to resolve; a machine whose name is in no
# hosts file gets it on loopback.
ensure_hostname_resolves() {
    getent hosts "$HOST" >/dev/null && return 0
    say "adding '127.0.0.1 $HOST' to /etc/hosts (the host name did not resolve)"
    echo "127.0.0.1 $HOST" >>/etc/hosts
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "cannot start Grid Engine: needs root (to install packages and run daemons)"
    mkdir -p "$STATE"
    ensure_hostname_resolves
    install_packages
    ensure_cell
    start_qmaster
    wait_qmaster
    configure
    start_execd
    wait_queue all.q
    wait_queue small.q
    say "Grid Engine is up (qmaster $(cat "$QMASTER_PIDFILE"), execd $(cat "$EXECD_PIDFILE"), all.q $SLOTS slots, small.q $SMALL_SLOTS)"
}

# TERM both daemons at once (qmaster alone takes ~5 s to shut down), wait for
# them, KILL what is left after 15 s.  Jobs already running under sge_shepherd
# are left to finish on their own.
cmd_stop() {
    local pids=() pid i alive
    pid=$(live_pid "$EXECD_PIDFILE" sge_execd) && pids+=("$pid")
    pid=$(live_pid "$QMASTER_PIDFILE" sge_qmaster) && pids+=("$pid")
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null
        for i in $(seq 1 150); do
            alive=0
            for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
            [ $alive = 0 ] && break
            sleep 0.1
        done
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null; done
    fi
    rm -f "$EXECD_PIDFILE" "$QMASTER_PIDFILE"
    return 0
}

cmd_status() {
    packages_installed || die "Grid Engine is not installed"
    live_pid "$QMASTER_PIDFILE" sge_qmaster >/dev/null || die "sge_qmaster is not running"
    live_pid "$EXECD_PIDFILE" sge_execd >/dev/null || die "sge_execd is not running"
    qmaster_answers || die "sge_qmaster does not answer"
    local state q
    for q in all.q small.q; do
        state=$(queue_state "$q")
        [ "$state" = ok ] || die "queue $q@$HOST is not usable (state: ${state:-missing})"
    done
}

cmd_env() {
    echo "export SGE_ROOT=$SGE_ROOT"
    echo "export SGE_CELL=$SGE_CELL"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: bash scripts/sge.sh start|stop|status|env" >&2; exit 2 ;;
esac
