#!/usr/bin/env bash
# A single-node Slurm for the tests, installed and started idempotently: Debian's slurm-wlm
# and munge (apt, once), a munge key, and slurmctld + slurmd on this host with a configuration
# of our own in $CLOAKBENCH_HOME/slurm. Prints the configuration's path: clients find the
# cluster with SLURM_CONF set to it. Safe to call again while the daemons run.
set -euo pipefail

HOME_DIR=${CLOAKBENCH_HOME:-$HOME/.cache/cloakbench}
DIR=$HOME_DIR/slurm
say() { echo "[slurm] $*" >&2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt; a minute the first time)"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >&2 \
        || { $SUDO apt-get update >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >&2; }
fi

# --- munge: the key and the daemon ---------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "creating a munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "munged --force" >&2 || munged --force >&2
    else
        munged --force >&2
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- the cluster: one node, this host ---------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
CONF=$DIR/slurm.conf
cat >"$CONF.new" <<EOF
ClusterName=cloakbench
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued task may start again cred_expire + 1 s after its requeue (default 120 s).
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Passes every few seconds (defaults 60 and 30 s): a requeued task starts as soon as it may.
SchedulerParameters=sched_interval=2,bf_interval=1
JobRequeue=1
ReturnToService=2
MaxArraySize=10001
MinJobAge=600
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    # A changed configuration needs fresh daemons.
    for d in slurmctld slurmd; do [ -f "$DIR/$d.pid" ] && kill "$(cat "$DIR/$d.pid")" 2>/dev/null || true; done
    sleep 1
else
    rm "$CONF.new"
fi
running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }
running slurmctld || { say "starting slurmctld"; slurmctld -f "$CONF" >&2; }
running slurmd || { say "starting slurmd"; slurmd -f "$CONF" >&2; }
export SLURM_CONF=$CONF
for _ in $(seq 100); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in
        idle* | mix* | alloc*) break ;;
        down* | drain*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
case "$state" in
    idle* | mix* | alloc*) say "node $HOST $state ($CPUS CPUs)" ;;
    *) say "ERROR: node $HOST is '$state' (logs in $DIR/log)"; exit 1 ;;
esac
echo "$CONF"
