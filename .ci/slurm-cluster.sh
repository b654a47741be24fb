#!/usr/bin/env bash
# A one-node SLURM cluster with accounting on this machine, for CI: `bash .ci/slurm-cluster.sh` (as root).
#
# Installs Debian's munge, mariadb-server, slurmdbd, slurmctld and slurmd, writes slurm.conf, slurmdbd.conf and
# gres.conf, starts the daemons in the background (no systemd needed) and waits until `sinfo` shows the node idle
# and `sacct` answers. Idempotent: daemons already running with the same configuration are left alone; a
# changed configuration restarts them. The node advertises one fake GPU (GRES gpu:1 backed by /dev/null) so that
# the workflow's `--gpus=1` training jobs are schedulable on a machine without a GPU; jobs see
# CUDA_VISIBLE_DEVICES=0 but no CUDA device and train on the CPU.
#
# The node also advertises at least SLURM_CI_MEMORY_MB of memory (default 64000; `SlurmdParameters=config_overrides`
# keeps slurmd from draining it) so that the profile's memory requests are schedulable unchanged; nothing
# enforces CPU or memory limits here (task/none). Job comments (the plugin's rule names) are kept in accounting.
#
# Environment: SLURM_CI_CLUSTER (cluster name, default cnnablate-ci), SLURM_CI_TIMEOUT (seconds to wait for each
# daemon, default 60), SLURM_CI_MEMORY_MB. Logs: /var/log/slurm-ci/ and /var/log/munge/. Tested on Debian 12
# (slurm-wlm 22.05, MariaDB 10.11) without systemd.
set -Eeuo pipefail

CLUSTER=${SLURM_CI_CLUSTER:-cnnablate-ci}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
MEMORY_MB=${SLURM_CI_MEMORY_MB:-64000}
HOST=$(hostname -s)
LOGDIR=/var/log/slurm-ci
ETC=/etc/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm-ci # local socket only; a CI throwaway, never a real cluster's password
PACKAGES=(munge mariadb-server mariadb-client slurmdbd slurmctld slurmd slurm-client)
START=$SECONDS

log() { printf '[slurm-ci %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() {
    printf '[slurm-ci] ERROR: %s\n' "$*" >&2
    for f in "$LOGDIR"/*.log /var/log/munge/munged.log; do
        [[ -s $f ]] && { printf -- '--- last lines of %s ---\n' "$f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"
[[ -r /etc/debian_version ]] || die "needs a Debian-like system (apt-get and Debian's slurm-wlm packages)"

# Wait until "$@" succeeds, at most $TIMEOUT seconds.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 1
    done
}

# The pid in a pid file if that process is alive and has the expected command name, else nothing.
live_pid() {
    local pidfile=$1 name=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name"* ]]; then
        echo "$pid"
    fi
}

# Stop a daemon this script started (found through its pid file, never by name).
stop_daemon() {
    local pidfile=$1 name=$2 pid
    pid=$(live_pid "$pidfile" "$name")
    [[ -n $pid ]] || return 0
    log "stopping $name (pid $pid) to apply the new configuration"
    kill "$pid"
    local deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "$name (pid $pid) did not stop"
        sleep 0.5
    done
}

# A same-named process not recorded in our pid file would hold the daemon's port: refuse rather than guess.
refuse_foreign() {
    local pidfile=$1 name=$2 ours others
    ours=$(live_pid "$pidfile" "$name")
    others=$(pgrep -x "$name" | grep -vx "${ours:-none}" | paste -sd' ' || true)
    [[ -z $others ]] || die "a $name not started by this script is running (pid(s) $others); stop it first"
}

# Install a generated file only if it differs; mark the daemons that read it for a restart.
CHANGED=()
install_file() {
    local target=$1 mode=$2 owner=$3 tmp=$4
    shift 4
    if [[ -f $target ]] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
    else
        log "writing $target"
        install -m "$mode" -o "$owner" -g "$owner" "$tmp" "$target"
        rm -f "$tmp"
        CHANGED+=("$@")
    fi
}
changed() { [[ " ${CHANGED[*]-} " == *" $1 "* ]]; }

# --- 1. packages -------------------------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # No init system starts services here; keep package scripts from trying (this script starts them).
    policy_rc=/usr/sbin/policy-rc.d
    [[ -e $policy_rc ]] && had_policy=1 || had_policy=0
    if ((!had_policy)); then printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod +x "$policy_rc"; fi
    apt_ok=0
    for attempt in 1 2; do
        if apt-get install -y -q --no-install-recommends "${missing[@]}" >"/tmp/slurm-ci-apt.log" 2>&1; then
            apt_ok=1
            break
        fi
        log "apt-get install failed (attempt $attempt); running apt-get update"
        apt-get update -q >>"/tmp/slurm-ci-apt.log" 2>&1 || true
    done
    if ((!had_policy)); then rm -f "$policy_rc"; fi
    ((apt_ok)) || { tail -n 30 /tmp/slurm-ci-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
    log "installed: $(dpkg-query -W -f='${Package} ${Version}\n' "${PACKAGES[@]}" | paste -sd' ')"
else
    log "packages already installed ($(dpkg-query -W -f='${Version}' slurmctld))"
fi

mkdir -p "$LOGDIR" "$ETC" /run/munge /run/mysqld /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# --- 2. munge ----------------------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --force; else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
refuse_foreign "$MUNGE_PID" munged
if [[ -z $(live_pid "$MUNGE_PID" munged) ]]; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" </dev/null # logs to /var/log/munge
else
    log "munged already running"
fi
wait_for "munge to answer" bash -c 'munge -n | unmunge'

# --- 3. MariaDB (the accounting database) ----------------------------------------------------------------------
MYSQL_PID=/run/mysqld/mysqld.pid
tmp=$(mktemp)
cat >"$tmp" <<'EOF'
# Written by .ci/slurm-cluster.sh: the settings slurmdbd asks for.
[mysqld]
innodb_lock_wait_timeout = 900
innodb_buffer_pool_size = 256M
EOF
install_file /etc/mysql/mariadb.conf.d/99-slurm-ci.cnf 644 root "$tmp" mariadb
if changed mariadb; then stop_daemon "$MYSQL_PID" mariadbd; fi
if ! mysqladmin --protocol=socket ping >/dev/null 2>&1; then
    [[ -d /var/lib/mysql/mysql ]] || { log "initialising the MariaDB data directory"; mariadb-install-db --user=mysql >"$LOGDIR/mariadb-install.log" 2>&1; }
    log "starting mariadbd"
    setsid -f /usr/sbin/mariadbd --user=mysql --pid-file="$MYSQL_PID" --log-error="$LOGDIR/mariadb.log" \
        </dev/null >>"$LOGDIR/mariadb.log" 2>&1
else
    log "mariadb already running"
fi
wait_for "mariadb to answer" mysqladmin --protocol=socket ping
mysql --protocol=socket -u root <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF

# --- 4. configuration --------------------------------------------------------------------------------------------
# The node's hardware as slurmd sees it (a mismatch would drain the node), plus one fake GPU.
hw=$(slurmd -C | head -n 1) || die "slurmd -C failed"
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
[[ -n $cpus ]] || die "could not read CPUs from 'slurmd -C': $hw"
node_hw=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' -e 's/ *$//' <<<"$hw")
real_mb=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
# Advertise at least MEMORY_MB so that the profile's real memory requests (train: 16 GB) are schedulable on a
# small CI machine; nothing enforces memory here (task/none, no cgroups) and the tiny jobs use well under 1 GB.
memory_mb=$((real_mb > MEMORY_MB ? real_mb : MEMORY_MB))

tmp=$(mktemp)
cat >"$tmp" <<EOF
# Written by .ci/slurm-cluster.sh: a one-node CI cluster with accounting (slurmdbd + MariaDB) and a fake GPU.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
MinJobAge=300
InactiveLimit=0
KillWait=10
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 $node_hw RealMemory=$memory_mb Gres=gpu:1 State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
install_file "$ETC/slurm.conf" 644 root "$tmp" slurmctld slurmd

tmp=$(mktemp)
cat >"$tmp" <<EOF
# Written by .ci/slurm-cluster.sh: no GPU here; one fake GPU device so that --gpus=1 jobs are schedulable.
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
EOF
install_file "$ETC/gres.conf" 644 root "$tmp" slurmctld slurmd

tmp=$(mktemp)
cat >"$tmp" <<EOF
# Written by .ci/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
install_file "$ETC/slurmdbd.conf" 600 root "$tmp" slurmdbd

# --- 5. slurmdbd, slurmctld, slurmd ------------------------------------------------------------------------------
for d in slurmd slurmctld slurmdbd; do refuse_foreign "/run/$d.pid" "$d"; done
# A changed configuration restarts the daemons that read it (slurmd before slurmctld: they share slurm.conf).
for d in slurmd slurmctld slurmdbd; do
    if changed "$d"; then stop_daemon "/run/$d.pid" "$d"; fi
done

if [[ -z $(live_pid /run/slurmdbd.pid slurmdbd) ]]; then
    log "starting slurmdbd"
    setsid -f /usr/sbin/slurmdbd </dev/null >>"$LOGDIR/slurmdbd.log" 2>&1
else
    log "slurmdbd already running"
fi
wait_for "slurmdbd to answer (sacctmgr)" sacctmgr -n -i show cluster
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in the accounting database"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

if [[ -z $(live_pid /run/slurmctld.pid slurmctld) ]]; then
    log "starting slurmctld"
    setsid -f /usr/sbin/slurmctld </dev/null >>"$LOGDIR/slurmctld.log" 2>&1
else
    log "slurmctld already running"
fi
wait_for "slurmctld to answer (scontrol ping)" bash -c 'scontrol ping | grep -q UP'

if [[ -z $(live_pid /run/slurmd.pid slurmd) ]]; then
    log "starting slurmd"
    setsid -f /usr/sbin/slurmd </dev/null >>"$LOGDIR/slurmd.log" 2>&1
else
    log "slurmd already running"
fi

# --- 6. wait until the node takes jobs and accounting answers -------------------------------------------------------
node_ready() {
    local state
    state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1)
    case $state in
        idle | mixed | allocated | completing) return 0 ;;
        down* | drain*)
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
            return 1
            ;;
        *) return 1 ;;
    esac
}
wait_for "node $HOST to become idle in sinfo" node_ready
wait_for "sacct to answer" sacct -n -X -S now-1minutes
wait_for "slurmctld to register $CLUSTER with slurmdbd" \
    bash -c "sacctmgr -n -P show cluster format=cluster,controlhost | grep -q '^$CLUSTER|.\+'"

sinfo -N -o '%N %T %c %m %G %P'
scontrol show node "$HOST" | grep -E 'Gres=|CfgTRES' | sed 's/^ */  /'
log "SLURM cluster '$CLUSTER' ready: node $HOST, $cpus CPUs, ${memory_mb} MB, 1 fake GPU, accounting via slurmdbd"
