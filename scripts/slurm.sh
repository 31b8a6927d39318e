#!/usr/bin/env bash
# A real one-node Slurm cluster on loopback for xqute's Slurm tests and benchmarks.
#
#   bash scripts/slurm.sh start|stop|status|env
#
# start  installs Debian's slurm-wlm pieces (slurmctld slurmd slurm-client munge,
#        slurmdbd + mariadb-server for sacct) if missing, writes the configuration
#        under $XQUTE_SLURM_STATE (default /tmp/xqute-infra/slurm) and starts, by
#        hand (there is no systemd), munged, mariadbd, slurmdbd, slurmctld and
#        slurmd; each only if it is not already running from our pid file.  Returns
#        once `sbatch`, `squeue` and `sacct` are usable.
# stop   cancels the jobs left on this cluster, stops only the daemons whose pid
#        files we wrote, and removes the state directory and the /etc/slurm link.
# status exit 0 if the cluster accepts jobs and accounting answers; else one line why.
# env    the variables clients need (SLURM_CONF).
set -uo pipefail

STATE=${XQUTE_SLURM_STATE:-/tmp/xqute-infra/slurm}
ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
SPOOL=$STATE/spool
DB_DIR=$STATE/mysql
SLURM_CONF_FILE=$ETC/slurm.conf
SLURMDBD_CONF_FILE=$ETC/slurmdbd.conf
DB_RUN=$STATE/mysql-run
DB_SOCKET=$DB_RUN/mysqld.sock
MUNGE_DIR=$STATE/munge
DB_PORT=${XQUTE_SLURM_DB_PORT:-3307}
DBD_PORT=${XQUTE_SLURMDBD_PORT:-6819}
CTLD_PORT=${XQUTE_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${XQUTE_SLURMD_PORT:-6818}
DB_PASS=xqute-slurm-local
CLUSTER=xqute
# CPUs the node declares: more than the machine has (slurmd accepts them with
# SlurmdParameters=config_overrides), so many trivial jobs run at once and a
# benchmark measures the submission path, not the cores.  Partition "small" on the
# same node lets at most SMALL_CPUS of its jobs run at once, for tests that need a
# job to wait in the queue.  MaxArraySize is low on purpose: tests submit more
# jobs than that to check that xqute splits its arrays.
NODE_CPUS=32
SMALL_CPUS=2
MAX_ARRAY_SIZE=100
# Debian's clients read /etc/slurm/slurm.conf when SLURM_CONF is unset; we link it
# to ours (only if nothing else is there) so a plain `sbatch` in any shell works.
ETC_LINK=/etc/slurm/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

say() { echo "slurm.sh: $*" >&2; }
die() { echo "slurm.sh: $*"; exit 1; }

# ---------------------------------------------------------------- pid files ---
# A daemon counts as ours only when our pid file names a live process whose
# command line still contains the expected binary (guards against pid reuse).
pid_alive() { # pidfile binary-name
    local pidfile=$1 name=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

stop_pidfile() { # pidfile binary-name
    local pidfile=$1 name=$2 pid i
    pid_alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
    pid=$(tr -dc '0-9' <"$pidfile")
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

wait_for() { # seconds description command...
    local secs=$1 what=$2 i
    shift 2
    for i in $(seq 1 $((secs * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------- packages ---
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "cannot install ${missing[*]}: not root"
    command -v apt-get >/dev/null || die "cannot install ${missing[*]}: no apt-get on this machine"
    say "installing ${missing[*]} (apt)"
    # Post-install scripts try to start services; with no systemd/init they must
    # not, so policy-rc.d forbids it for the duration of the install.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && made_policy=1
    fi
    local ok=0
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
        --no-install-recommends "${missing[@]}" >"$STATE/apt.log" 2>&1 || ok=$?
    if [ $ok -ne 0 ]; then
        # The package lists may be stale on a fresh machine: refresh once, retry.
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update >>"$STATE/apt.log" 2>&1
        ok=0
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
            --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1 || ok=$?
    fi
    [ $made_policy -eq 1 ] && rm -f $policy
    [ $ok -eq 0 ] || die "apt-get install ${missing[*]} failed (see $STATE/apt.log)"
}

# ----------------------------------------------------------------- configure ---
# Writes $2 to file $1 only when it differs; returns 0 when the file changed.
write_if_changed() {
    local file=$1 content=$2
    if [ -f "$file" ] && [ "$(cat "$file")" = "$content" ]; then
        return 1
    fi
    printf '%s\n' "$content" >"$file"
    return 0
}

configure() {
    local host mem_mb def_mem changed=0
    host=$(hostname -s)
    # Leave some memory unclaimed: a node configured with more RealMemory than
    # slurmd finds is drained ("Low RealMemory").
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    # Memory is a consumable resource (CR_Core_Memory): a job without --mem gets
    # DefMemPerCPU per CPU, so all NODE_CPUS CPUs' worth of jobs must fit
    # RealMemory or jobs would wait for memory rather than CPUs.
    def_mem=$((mem_mb / NODE_CPUS))
    [ "$def_mem" -gt 1024 ] && def_mem=1024

    mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d"
    chown -R slurm:slurm "$SPOOL/ctld" "$LOG" "$RUN"
    chmod 755 "$STATE" "$ETC" "$RUN" "$LOG"

    write_if_changed "$SLURM_CONF_FILE" "# Written by xqute scripts/slurm.sh; one node on loopback.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
MaxArraySize=$MAX_ARRAY_SIZE
MinJobAge=300
ReturnToService=2
KillWait=2
InactiveLimit=0
MpiDefault=none
# Memory and CPU of each step sampled every second (sacct's MaxRSS, TotalCPU),
# and a job over its --mem killed by slurmstepd (no cgroups here: the job ends
# FAILED by signal 9, its stderr saying: Exceeded job memory limit).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Limits are enforced so a per-user submit limit (MaxSubmitJobs) can be set and
# seen refusing jobs, as on a shared cluster; users need an association (below).
AccountingStorageEnforce=associations,limits
NodeName=$host NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=small Nodes=ALL MaxCPUsPerNode=$SMALL_CPUS MaxTime=INFINITE State=UP" && changed=1

    write_if_changed "$SLURMDBD_CONF_FILE" "# Written by xqute scripts/slurm.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$host
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db" && changed=1
    chown slurm:slurm "$SLURMDBD_CONF_FILE"
    chmod 600 "$SLURMDBD_CONF_FILE"
    chmod 644 "$SLURM_CONF_FILE"

    mkdir -p /etc/slurm
    if [ -L "$ETC_LINK" ] || [ ! -e "$ETC_LINK" ]; then
        ln -sfn "$SLURM_CONF_FILE" "$ETC_LINK"
    fi
    # A changed configuration applies only after a restart of the slurm daemons.
    if [ $changed -eq 1 ]; then
        stop_pidfile "$RUN/slurmd.pid" slurmd
        stop_pidfile "$RUN/slurmctld.pid" slurmctld
        stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    fi
}

# ------------------------------------------------------------------- daemons ---
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi  # ours or someone else's: usable either way
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge "$MUNGE_DIR" && chown munge:munge /run/munge "$MUNGE_DIR"
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" ||
        die "munged did not start (see $MUNGE_DIR/munged.log)"
    wait_for 10 munge munge_ok || die "munged started but does not answer"
}

db_ok() { mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping >/dev/null 2>&1; }

start_mariadb() {
    if pid_alive "$DB_RUN/mariadb.pid" mariadbd && db_ok; then return 0; fi
    local fresh=0
    if [ ! -d "$DB_DIR/mysql" ]; then
        rm -rf "$DB_DIR"
        mkdir -p "$DB_DIR" && chown mysql:mysql "$DB_DIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$DB_RUN.install.log" 2>&1 ||
            die "mariadb-install-db failed (see $DB_RUN.install.log)"
        fresh=1
    fi
    mkdir -p "$DB_RUN" && chown mysql:mysql "$DB_RUN"
    # setsid: in a session of its own, so that a kill of the shell's process
    # group that started it (a tool ending its job) does not take it down
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCKET" \
        --pid-file="$DB_RUN/mariadb.pid" --log-error="$DB_RUN/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=64M --skip-log-bin \
        </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb db_ok || die "mariadbd did not come up (see $DB_RUN/mariadb.log)"
    if [ $fresh -eq 1 ] || ! mariadb --no-defaults --socket="$DB_SOCKET" -uroot \
        -e 'use slurm_acct_db' >/dev/null 2>&1; then
        mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<SQL ||
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
            die "could not create the slurm accounting database"
    fi
}

dbd_ok() { SLURM_CONF=$SLURM_CONF_FILE sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {
    if pid_alive "$RUN/slurmdbd.pid" slurmdbd; then return 0; fi
    SLURM_CONF=$SLURM_CONF_FILE /usr/sbin/slurmdbd >>"$LOG/slurmdbd.out" 2>&1 ||
        die "slurmdbd did not start (see $LOG/slurmdbd.log)"
    wait_for 60 slurmdbd dbd_ok || die "slurmdbd does not answer (see $LOG/slurmdbd.log)"
}

# With limits enforced, a user needs an association to submit: root (and the user
# who ran sudo, if any) get one in account "xqute".
add_associations() {
    local user
    SLURM_CONF=$SLURM_CONF_FILE sacctmgr -n -P show account xqute format=account 2>/dev/null |
        grep -q xqute ||
        SLURM_CONF=$SLURM_CONF_FILE sacctmgr -i add account xqute Cluster=$CLUSTER \
            Description=xqute Organization=xqute >/dev/null ||
        die "could not add the Slurm account xqute"
    for user in root ${SUDO_USER:-}; do
        SLURM_CONF=$SLURM_CONF_FILE sacctmgr -n -P show assoc user="$user" account=xqute \
            format=user 2>/dev/null | grep -q . && continue
        SLURM_CONF=$SLURM_CONF_FILE sacctmgr -i add user "$user" Account=xqute \
            Cluster=$CLUSTER >/dev/null || die "could not add Slurm user $user"
    done
}

ctld_ok() { SLURM_CONF=$SLURM_CONF_FILE scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then return 0; fi
    SLURM_CONF=$SLURM_CONF_FILE /usr/sbin/slurmctld -i >>"$LOG/slurmctld.out" 2>&1 ||
        die "slurmctld did not start (see $LOG/slurmctld.log)"
    wait_for 60 slurmctld ctld_ok || die "slurmctld does not answer (see $LOG/slurmctld.log)"
}

# The node state as slurmctld sees it: idle/mixed/allocated mean it takes jobs.
node_state() { SLURM_CONF=$SLURM_CONF_FILE sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }
node_ok() { node_state | grep -Eq '^(idle|mixed|allocated|completing)$'; }

start_slurmd() {
    if ! pid_alive "$RUN/slurmd.pid" slurmd; then
        SLURM_CONF=$SLURM_CONF_FILE /usr/sbin/slurmd >>"$LOG/slurmd.out" 2>&1 ||
            die "slurmd did not start (see $LOG/slurmd.log)"
    fi
    if ! wait_for 30 slurmd node_ok; then
        # A node left down/drained by an earlier run: bring it back once.
        SLURM_CONF=$SLURM_CONF_FILE scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1
        wait_for 30 slurmd node_ok ||
            die "node is '$(node_state)', not idle (see $LOG/slurmd.log)"
    fi
}

# ---------------------------------------------------------------------- verbs ---
cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "cannot start Slurm here: needs root (daemons run as root/slurm/munge)"
    mkdir -p "$STATE"
    install_packages
    configure
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    add_associations
    start_slurmd
    cmd_status >/dev/null || die "started, but status says: $(cmd_status)"
    say "up: SLURM_CONF=$SLURM_CONF_FILE"
}

cmd_stop() {
    if [ -f "$SLURM_CONF_FILE" ] && ctld_ok; then
        # Jobs of this (private) cluster would outlive slurmd as slurmstepd processes.
        local ids
        ids=$(SLURM_CONF=$SLURM_CONF_FILE squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
        [ -n "${ids// /}" ] && SLURM_CONF=$SLURM_CONF_FILE scancel $ids 2>/dev/null
    fi
    # Everything goes, so all are told at once and waited for together.
    stop_pidfile "$RUN/slurmd.pid" slurmd &
    stop_pidfile "$RUN/slurmctld.pid" slurmctld &
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd &
    stop_pidfile "$DB_RUN/mariadb.pid" mariadbd &
    stop_pidfile "$MUNGE_DIR/munged.pid" munged &
    wait
    if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$SLURM_CONF_FILE" ]; then
        rm -f "$ETC_LINK"
    fi
    rm -rf "$STATE"
    return 0
}

cmd_status() {
    [ -f "$SLURM_CONF_FILE" ] || { echo "not started (no $SLURM_CONF_FILE)"; return 1; }
    command -v sbatch >/dev/null || { echo "slurm-client is not installed"; return 1; }
    munge_ok || { echo "munged is not answering"; return 1; }
    pid_alive "$RUN/slurmctld.pid" slurmctld && ctld_ok ||
        { echo "slurmctld is not running"; return 1; }
    pid_alive "$RUN/slurmd.pid" slurmd || { echo "slurmd is not running"; return 1; }
    node_ok || { echo "node state is '$(node_state)', not idle"; return 1; }
    pid_alive "$RUN/slurmdbd.pid" slurmdbd && dbd_ok ||
        { echo "slurmdbd (accounting, for sacct) is not answering"; return 1; }
    echo "up"
}

cmd_env() {
    echo "export SLURM_CONF=$SLURM_CONF_FILE"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*) echo "usage: $0 start|stop|status|env"; exit 2 ;;
esac
