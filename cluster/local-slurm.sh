#!/usr/bin/env bash
# A real single-node SLURM on this machine, for testing profiles/slurm (issue 13).
#
#   sudo bash cluster/local-slurm.sh up     # install, configure, start; wait for the node idle
#   sudo bash cluster/local-slurm.sh down   # stop exactly the daemons `up` started
#   bash cluster/local-slurm.sh status      # what runs, sinfo
#
# As root on Debian (12): installs Debian's slurm-wlm (slurmctld, slurmd, client), munge, and
# slurmdbd with mariadb-server (the executor plugin asks `sacct` for job states, and sacct
# needs the accounting daemon), writes /etc/slurm/{slurm,gres,slurmdbd}.conf for this host
# with its real CPU count and memory, and starts munged, mariadbd, slurmdbd, slurmctld and
# slurmd without systemd (containers and CI machines have none).  A daemon that was already
# running is used, not started, and `down` leaves it alone: `up` records the processes it
# started in $STATE/started.
#
# The GPU stand-in: the node offers a generic resource `gpu` (count $PINN_NG_SLURM_GPUS,
# default 2) backed by harmless character devices (/dev/null, /dev/zero), so `--gpus=1` (the profile's `gpu: 1`) is
# scheduled and accounted exactly as on a GPU node, while the job computes on the CPU.
# The account `pinnng` is registered for root in the accounting database; the partition is
# `debug` (the default partition).
set -euo pipefail

STATE="${PINN_NG_SLURM_STATE:-/var/lib/pinn-ng-slurm}"
ETC=/etc/slurm
MARK="# written by pinn-ng cluster/local-slurm.sh"
CLUSTER=pinnng
ACCOUNT=pinnng
PARTITION=debug
GPUS="${PINN_NG_SLURM_GPUS:-2}"   # 1 to 5
DBPASS=pinnng-local   # local socket only; the database listens on no network port

die() { echo "local-slurm.sh: error: $*" >&2; exit 2; }
say() { echo "local-slurm.sh: $*" >&2; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
is() { [ "$(ps -p "$2" -o comm= 2>/dev/null)" = "$1" ]; }  # is <name> <pid>
pid_of_file() { [ -s "$1" ] && tr -d ' \n' < "$1" || true; }

wait_for() {  # wait_for <seconds> <what> <command...>
    local secs=$1 what=$2; shift 2
    local i
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not come up within ${secs} s (logs: $STATE/*.log)"
}

install_packages() {
    local pkgs=(slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

node_memory_mb() {
    # What slurmd itself will detect (it drains a node configured with more); fall back to
    # /proc/meminfo.
    local mem
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    [ -n "$mem" ] || mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    echo "$mem"
}

write_file() {  # write_file <path> <mode>; content on stdin; never overwrite a foreign file
    local path=$1 mode=$2
    if [ -e "$path" ] && ! grep -qF "$MARK" "$path"; then
        die "$path exists and was not written by this script; move it away first"
    fi
    { echo "$MARK"; cat; } > "$path.tmp"
    chmod "$mode" "$path.tmp"
    mv "$path.tmp" "$path"
}

write_config() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(node_memory_mb)
    mkdir -p "$ETC" "$STATE/ctld" "$STATE/d"
    write_file "$ETC/slurm.conf" 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups in containers: plain process tracking, no task confinement.
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
ReturnToService=2
# Time limits are checked every 30 s (slurmctld's default); a job over its limit is killed.
KillWait=10
MinJobAge=300
# A job without --mem gets its share of the node per CPU, not the whole node.
DefMemPerCPU=$((mem / cpus))
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm's gpu plugin counts a node's GPUs by their device files (without File= it finds
    # none and drains the node), so the stand-ins are harmless character devices that no job
    # opens: with TaskPlugin=task/none nothing confines a job to them either.
    local files
    files=$(printf '%s\n' /dev/null /dev/zero /dev/full /dev/random /dev/urandom \
        | head -n "$GPUS" | paste -sd, -)
    write_file "$ETC/gres.conf" 644 <<EOF
# $GPUS GPU stand-ins: scheduled and accounted as GPUs; the jobs compute on the CPU.
NodeName=$host Name=gpu File=$files
EOF
    write_file "$ETC/slurmdbd.conf" 600 <<EOF
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
    say "node $host: CPUs=$cpus RealMemory=${mem} MB, gres gpu:$GPUS (stand-in)"
}

started() { echo "$1 $2" >> "$STATE/started"; }  # name pid

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "munged already running"; return; fi
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 20 munged bash -c 'munge -n | unmunge'
    started munged "$(pid_of_file /run/munge/munged.pid)"
}

start_mariadb() {
    if mariadb-admin ping >/dev/null 2>&1; then say "mariadb already running"
    else
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
        # No network port: slurmdbd reaches it through the socket (StorageHost=localhost).
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --pid-file=/run/mysqld/mariadb-pinn-ng.pid >"$STATE/mariadb.log" 2>&1 < /dev/null &
        wait_for 60 mariadb mariadb-admin ping
        started mariadbd "$(pid_of_file /run/mysqld/mariadb-pinn-ng.pid)"
    fi
    mariadb <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_daemon() {  # start_daemon <name> <pidfile> <check command...>
    local name=$1 pidfile=$2; shift 2
    if alive "$(pid_of_file "$pidfile")"; then say "$name already running"; return; fi
    "/usr/sbin/$name"
    wait_for 60 "$name" "$@"
    started "$name" "$(pid_of_file "$pidfile")"
}

node_idle() { [ "$(sinfo -h -N -o %t | sort -u)" = "idle" ]; }

up() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"
    install_packages
    write_config
    touch "$STATE/started"   # kept across repeated `up`s until `down`
    start_munge
    start_mariadb
    start_daemon slurmdbd "$STATE/slurmdbd.pid" sacctmgr -n list cluster
    # The cluster, an account and root's association (AccountingStorageEnforce=associations).
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" \
        Description="pinn-ng local test" Organization=pinn-ng >/dev/null 2>&1 || true
    sacctmgr -i -Q add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true
    start_daemon slurmctld "$STATE/slurmctld.pid" scontrol ping
    start_daemon slurmd "$STATE/slurmd.pid" bash -c "sinfo -h -N -o %t | grep -qv unk"
    wait_for 60 "the node (sinfo idle)" node_idle
    say "up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m gres=%G partition=%P')"
    say "account '$ACCOUNT', partition '$PARTITION'; started: $(cut -d' ' -f1 "$STATE/started" | xargs)"
}

down() {
    [ -s "$STATE/started" ] || { say "down: nothing was started by up"; return 0; }
    local name pid
    # Reverse order of starting: slurmd, slurmctld, slurmdbd, mariadbd, munged.
    tac "$STATE/started" | while read -r name pid; do
        if alive "$pid" && is "$name" "$pid"; then
            kill "$pid"
            for _ in $(seq 60); do alive "$pid" || break; sleep 0.5; done
            alive "$pid" && { say "$name ($pid) ignores SIGTERM; SIGKILL"; kill -9 "$pid"; }
            say "stopped $name ($pid)"
        else
            say "$name ($pid) had already exited; nothing to stop"
        fi
    done
    : > "$STATE/started"
}

status() {
    if [ -s "$STATE/started" ]; then
        while read -r name pid; do
            alive "$pid" && echo "$name $pid running" || echo "$name $pid gone"
        done < "$STATE/started"
    fi
    sinfo 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
