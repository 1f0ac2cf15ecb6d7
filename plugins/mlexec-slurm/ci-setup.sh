#!/usr/bin/env bash
# Prepare a bare Debian 12 machine (as root) for the mlexec-slurm tests: a real
# single-node Slurm cluster (munge, slurmctld and slurmd from Debian's
# packages), started detached since there is no systemd.
# Idempotent: packages, key and config are kept when present, and daemons
# already running are left alone. Takes under a minute on a bare machine.
#
# The test cluster: partition `debug` (default, 60 minute MaxTime, limits
# enforced at submission so `sbatch --test-only` refuses a longer --time) and
# partition `urgent` on the same node, whose jobs preempt (cancel) debug's;
# memory over --mem is killed (jobacct_gather OverMemoryKill, checked every
# second); KillWait=2 so a job over its time limit ends promptly; no
# accounting storage (sacct says it is disabled); finished jobs kept 300 s.
set -euo pipefail

log() { echo "mlexec-slurm ci-setup: $*"; }

need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mib=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
real_mem=$(( mem_mib > 4096 ? mem_mib - 2048 : mem_mib / 2 ))

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge

conf=/etc/slurm/slurm.conf
want=$(cat <<CONF
# Written by plugins/mlexec-slurm/ci-setup.sh: a one-machine test cluster.
ClusterName=mlexec
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
KillWait=2
OverTimeLimit=0
MinJobAge=300
InactiveLimit=0
EnforcePartLimits=ALL
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
NodeName=$host CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=60 PriorityTier=1 State=UP
PartitionName=urgent Nodes=$host MaxTime=60 PriorityTier=10 State=UP
CONF
)
changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    log "writing $conf"
    printf '%s\n' "$want" >"$conf"
    changed=1
fi

if [ ! -f /etc/munge/munge.key ]; then
    log "creating the munge key"
    mungekey -c
fi
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then
    # A new config: restart what runs so it reads it.
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 100); do running "$pidfile" || break; sleep 0.1; done
        fi
    done
fi
if ! running /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld
fi
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd
fi

# Ready when the node is idle (or already running jobs) in the debug partition.
for _ in $(seq 300); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n1 || true)
    case "$state" in idle|mix|alloc) break ;; esac
    sleep 0.2
done
case "$state" in
    idle|mix|alloc) ;;
    *)
        # A node left down by an earlier run (state saved across restarts).
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
        for _ in $(seq 100); do
            state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n1 || true)
            case "$state" in idle|mix|alloc) break ;; esac
            sleep 0.2
        done
        ;;
esac
case "$state" in
    idle|mix|alloc) log "ready: $(sinfo --version), node $host $state" ;;
    *) log "the node is not up (state '${state:-none}'):"; tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; exit 1 ;;
esac
