#!/usr/bin/env bash
# Prepare a bare Debian 12 machine (as root) for the mlexec-slurm tests: a real
# single-node Slurm cluster with accounting (munge, slurmctld, slurmd, slurmdbd
# and MariaDB from Debian's packages), started detached since there is no
# systemd.
# Idempotent: packages, key, database and config are kept when present, and
# daemons already running are left alone. Takes about a minute on a bare
# machine, a few seconds when everything is there.
#
# The test cluster: partition `debug` (default, 60 minute MaxTime, limits
# enforced at submission so `sbatch --test-only` refuses a longer --time) and
# partition `urgent` on the same node, whose jobs preempt debug's: a preempted
# job gets its --signal at once (preempt_send_user_signal), GraceTime=5 s to
# save its work, then goes back to the queue (PreemptMode=REQUEUE) and starts
# again with the same job id once the node is free; partition `spot` on the
# same node, whose jobs urgent's preempt by cancelling them (PreemptMode=CANCEL:
# PREEMPTED, no requeue);
# two GPUs of type a100 in Slurm's bookkeeping only (gres gpu:a100:2; no GPU
# behind them), so GPU requests are accepted, allocated and shown;
# accounting in slurmdbd (MariaDB on loopback), associations enforced, so an
# unknown --account is refused; memory over --mem ends the job OUT_OF_MEMORY
# through cgroup v1 (task/cgroup) where the machine mounts the memory
# controller read-write, else killed by job accounting (OverMemoryKill);
# KillWait=2 so a job over its time limit ends promptly; finished jobs kept
# only 5 s by the controller (MinJobAge), so the tests also reach the path
# where a job's end comes from accounting (sacct).
#
# A second node, node2, for multi-node runs: a second slurmd on this machine in
# a network namespace of its own (mlexec-n2, a veth pair 10.250.2.1 (host) <->
# 10.250.2.2 (node2), default route through the host's end), a UTS namespace
# (its jobs see the host name node2) and the mount namespace `ip netns exec`
# makes, where /etc/netns/mlexec-n2/hosts is /etc/hosts (this machine's name is
# 10.250.2.1 there; on the host, node2 is 10.250.2.2, one line added to
# /etc/hosts). It shares the file system (munge's socket, the shared folder)
# and registers with the one controller. It is only in partition `multi`
# (this machine and node2), so jobs in debug and urgent never land on it. Its
# slurmd reads its own copy of slurm.conf (/etc/slurm/node2/) with its own
# spool, pid and log files and proctrack/linuxproc, task/none: two slurmds of
# one machine would share cgroup paths (Debian's Slurm is built without
# multiple-slurmd support), so memory limits on node2 come from job
# accounting. Traffic goes only between this machine and that namespace.
#
# The cluster owns its state: the controller's and the node's state live in
# /var/spool/mlexec-slurm, which nothing else uses, so a cluster of another
# name that ran on this machine before (in Slurm's default /var/spool/slurmctld)
# cannot stop slurmctld with "CLUSTER NAME MISMATCH". Should that folder still
# remember another name (an older version of this script), its state is
# cleared. A controller starting from empty state numbers its jobs after the
# last one in accounting (FirstJobId), so a job id never means two jobs to sacct.
set -euo pipefail

log() { echo "mlexec-slurm ci-setup: $*"; }

need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v slurmdbd >/dev/null 2>&1 || need+=(slurmdbd)
command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)  # the second node's network namespace
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

cluster=mlexec
# The second node: its name, network namespace, veth pair and addresses.
node2=node2 netns=mlexec-n2 veth_host=mlx-n2h veth_node=mlx-n2c
host_addr=10.250.2.1 node2_addr=10.250.2.2
node2_conf_dir=/etc/slurm/node2
state=/var/spool/mlexec-slurm  # this cluster's own: never shared with another cluster
ctld_state=$state/slurmctld
mkdir -p /etc/slurm "$ctld_state" "$state/slurmd" /var/log/slurm /run/munge

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

running() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# Accounting's database first: MariaDB on loopback (slurmdbd comes after the config).
if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    log "starting mariadbd"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    setsid -f /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
        --log-error=/var/log/mysql-mlexec.err </dev/null >/dev/null 2>&1
    for _ in $(seq 300); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'mlexec-test';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# Where the controller's state starts afresh (no state yet, or state another cluster
# name left), its first job id comes after the last one accounting knows; otherwise the
# one already configured stays (it only matters to a controller without state).
if [ "$(cat "$ctld_state/clustername" 2>/dev/null || true)" != "$cluster" ]; then
    first_job=$(mariadb -N -B -e "SELECT COALESCE(MAX(id_job), 0) + 1 FROM slurm_acct_db.${cluster}_job_table" \
        2>/dev/null || true)
else
    first_job=$(sed -n 's/^FirstJobId=//p' /etc/slurm/slurm.conf 2>/dev/null || true)
fi
case "$first_job" in ''|*[!0-9]*|0) first_job=1 ;; esac

# Memory limits through cgroup v1 where this machine has the memory controller
# mounted read-write with swap accounting; else through job accounting.
memcg=/sys/fs/cgroup/memory
if [ -w "$memcg" ] && [ -e "$memcg/memory.memsw.limit_in_bytes" ] \
        && grep -qs " $memcg cgroup .*memory" /proc/mounts; then
    proctrack=proctrack/cgroup task=task/cgroup gather_params=""
    memory_note="cgroup v1 (OUT_OF_MEMORY)"
else
    proctrack=proctrack/linuxproc task=task/none gather_params="JobAcctGatherParams=OverMemoryKill"
    memory_note="job accounting (OverMemoryKill: no writable cgroup v1 memory controller)"
fi
cgroup_want=$(cat <<CONF
# Written by plugins/mlexec-slurm/ci-setup.sh.
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
CONF
)

conf=/etc/slurm/slurm.conf
# Seconds a preempted job of debug (or multi) has between the warning (its --signal, sent at
# once: preempt_send_user_signal) and its requeue.
grace=5
want=$(cat <<CONF
# Written by plugins/mlexec-slurm/ci-setup.sh: a one-machine test cluster.
ClusterName=$cluster
SlurmctldHost=$host
AuthType=auth/munge
# A job credential lives 10 s (Slurm's default: 120): Slurm holds a requeued job that long plus one
# second before it may start again, and a node refuses to start it sooner ("Job credential revoked").
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=$proctrack
TaskPlugin=$task
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
StateSaveLocation=$ctld_state
SlurmdSpoolDir=$state/slurmd
FirstJobId=$first_job
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
KillWait=2
OverTimeLimit=0
MinJobAge=5
InactiveLimit=0
EnforcePartLimits=ALL
JobCompType=jobcomp/none
DebugFlags=NO_CONF_HASH
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
$gather_params
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$real_mem Gres=gpu:a100:2 State=UNKNOWN
NodeName=$node2 NodeAddr=$node2_addr NodeHostname=$node2 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=60 PriorityTier=1 GraceTime=$grace State=UP
PartitionName=urgent Nodes=$host MaxTime=60 PriorityTier=10 State=UP
PartitionName=multi Nodes=$host,$node2 MaxTime=60 PriorityTier=1 GraceTime=$grace State=UP
PartitionName=spot Nodes=$host MaxTime=60 PriorityTier=1 PreemptMode=CANCEL State=UP
CONF
)
# Two GPUs of type a100 that exist only in Slurm's bookkeeping: slurmd (22.05) drops a GPU
# without a File, so each gets a character device node with /dev/null's numbers (a regular
# file where mknod is not allowed: slurmd logs an error and counts it all the same). No GPU
# is behind them: `--gres=gpu:a100:1` is accepted, allocated (CUDA_VISIBLE_DEVICES=0) and
# shown by scontrol, and the job sees no device (no ConstrainDevices in cgroup.conf).
gpus=$state/gpus
mkdir -p "$gpus"
for i in 0 1; do
    [ -e "$gpus/gpu$i" ] || mknod "$gpus/gpu$i" c 1 3 2>/dev/null || touch "$gpus/gpu$i"
done
gres_want=$(cat <<CONF
# Written by plugins/mlexec-slurm/ci-setup.sh: GPUs without a GPU (Slurm's bookkeeping only).
NodeName=$host Name=gpu Type=a100 File=$gpus/gpu[0-1]
CONF
)
changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    log "writing $conf"
    printf '%s\n' "$want" >"$conf"
    changed=1
fi
if [ ! -f /etc/slurm/gres.conf ] || [ "$(cat /etc/slurm/gres.conf)" != "$gres_want" ]; then
    printf '%s\n' "$gres_want" >/etc/slurm/gres.conf
    changed=1
fi
if [ ! -f /etc/slurm/cgroup.conf ] || [ "$(cat /etc/slurm/cgroup.conf)" != "$cgroup_want" ]; then
    printf '%s\n' "$cgroup_want" >/etc/slurm/cgroup.conf
    changed=1
fi

# node2's slurmd reads its own slurm.conf: the same cluster, with its own spool, pid and log
# files and no cgroups (see the top). Its gres.conf is the host's (GPUs only on the host).
node2_want=$(printf '%s\n' "$want" | sed \
    -e "s|^ProctrackType=.*|ProctrackType=proctrack/linuxproc|" \
    -e "s|^TaskPlugin=.*|TaskPlugin=task/none|" \
    -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$state/slurmd-$node2|" \
    -e "s|^SlurmdPidFile=.*|SlurmdPidFile=/run/slurmd-$node2.pid|" \
    -e "s|^SlurmdLogFile=.*|SlurmdLogFile=/var/log/slurm/slurmd-$node2.log|" \
    -e "s|^JobAcctGatherParams=.*||" \
    -e "s|^JobAcctGatherFrequency=.*|&\nJobAcctGatherParams=OverMemoryKill|")
mkdir -p "$node2_conf_dir" "$state/slurmd-$node2"
node2_changed=0
if [ ! -f "$node2_conf_dir/slurm.conf" ] || [ "$(cat "$node2_conf_dir/slurm.conf")" != "$node2_want" ]; then
    printf '%s\n' "$node2_want" >"$node2_conf_dir/slurm.conf"
    node2_changed=1
fi
if ! cmp -s /etc/slurm/gres.conf "$node2_conf_dir/gres.conf"; then
    cp /etc/slurm/gres.conf "$node2_conf_dir/gres.conf"
    node2_changed=1
fi

# node2's network: a namespace, a veth pair with an address on each end, a default route
# through the host's end (the controller's address), and the names of both nodes.
if [ ! -e "/run/netns/$netns" ]; then
    log "creating network namespace $netns for $node2"
    ip netns add "$netns"
fi
if ! ip link show "$veth_host" >/dev/null 2>&1; then
    ip netns exec "$netns" ip link del "$veth_node" >/dev/null 2>&1 || true
    ip link add "$veth_host" type veth peer name "$veth_node"
    ip link set "$veth_node" netns "$netns"
fi
ip addr show dev "$veth_host" | grep -w "$host_addr/24" >/dev/null || ip addr add "$host_addr/24" dev "$veth_host"
ip link set "$veth_host" up
ip netns exec "$netns" sh -e -c "
    ip addr show dev $veth_node | grep -w $node2_addr/24 >/dev/null || ip addr add $node2_addr/24 dev $veth_node
    ip link set $veth_node up
    ip link set lo up
    ip route replace default via $host_addr"
mkdir -p "/etc/netns/$netns"
netns_hosts=$(printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$host_addr" "$host" "$node2_addr" "$node2")
if [ "$(cat "/etc/netns/$netns/hosts" 2>/dev/null)" != "$netns_hosts" ]; then
    printf '%s\n' "$netns_hosts" >"/etc/netns/$netns/hosts"  # /etc/hosts inside the namespace
    node2_changed=1
fi
if ! grep -qE "^$node2_addr[[:space:]]+$node2([[:space:]]|\$)" /etc/hosts; then
    printf '%s %s  # mlexec-slurm test cluster (ci-setup.sh)\n' "$node2_addr" "$node2" >>/etc/hosts
fi

# Accounting: slurmdbd, then the cluster, account and user in it (slurmctld registers
# with slurmdbd when it starts).
dbd_want=$(cat <<CONF
# Written by plugins/mlexec-slurm/ci-setup.sh: accounting for the test cluster.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=mlexec-test
StorageLoc=slurm_acct_db
CONF
)
if [ ! -f /etc/slurm/slurmdbd.conf ] || [ "$(cat /etc/slurm/slurmdbd.conf)" != "$dbd_want" ]; then
    log "writing /etc/slurm/slurmdbd.conf"
    printf '%s\n' "$dbd_want" >/etc/slurm/slurmdbd.conf
    if running /run/slurmdbd.pid; then
        kill "$(cat /run/slurmdbd.pid)"
        for _ in $(seq 100); do running /run/slurmdbd.pid || break; sleep 0.1; done
    fi
fi
chmod 600 /etc/slurm/slurmdbd.conf
if ! running /run/slurmdbd.pid; then
    log "starting slurmdbd"
    slurmdbd
    changed=1  # a slurmctld already running must register with the new slurmdbd
fi
clusters=
for _ in $(seq 300); do clusters=$(sacctmgr -n -P list cluster format=cluster 2>/dev/null) && break; sleep 0.1; done
# The cluster, and the account and user in *this* cluster's associations (a cluster of
# another name registered in the same database has its own, which do not count).
if ! grep -qx "$cluster" <<<"$clusters"; then
    sacctmgr -i add cluster "$cluster" >/dev/null
    changed=1  # a slurmctld already running must register with the cluster now there
fi
assocs=$(sacctmgr -n -P list assoc cluster="$cluster" format=account,user)
if ! grep -qx 'mlexec|' <<<"$assocs"; then
    sacctmgr -i add account mlexec Cluster="$cluster" Description=mlexec-tests Organization=mlexec >/dev/null
fi
if ! grep -qx 'mlexec|root' <<<"$assocs"; then
    sacctmgr -i add user root Account=mlexec Cluster="$cluster" >/dev/null
fi
if [ "$changed" = 1 ]; then node2_changed=1; fi
if [ "$changed" = 1 ] || [ "$node2_changed" = 1 ]; then
    # A new config: restart what runs so it reads it.
    pidfiles=(/run/slurmd-$node2.pid)
    [ "$changed" = 1 ] && pidfiles+=(/run/slurmd.pid /run/slurmctld.pid)
    for pidfile in "${pidfiles[@]}"; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 100); do running "$pidfile" || break; sleep 0.1; done
        fi
    done
fi
if ! running /run/slurmctld.pid; then
    remembered=$(cat "$ctld_state/clustername" 2>/dev/null || true)
    if [ -n "$remembered" ] && [ "$remembered" != "$cluster" ]; then
        # slurmctld would stop with "CLUSTER NAME MISMATCH": the state is another cluster's.
        log "clearing $ctld_state: it holds the state of cluster '$remembered', not '$cluster'"
        find "$ctld_state" -mindepth 1 -delete
    fi
    log "starting slurmctld"
    slurmctld || { log "slurmctld did not start:"; tail -n 5 /var/log/slurm/slurmctld.log; exit 1; }
fi
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd || { log "slurmd did not start:"; tail -n 5 /var/log/slurm/slurmd.log; exit 1; }
fi
if ! running "/run/slurmd-$node2.pid"; then
    log "starting slurmd for $node2 in network namespace $netns"
    # Not `ip netns exec`: it mounts a fresh /sys, without the cgroup hierarchies slurmd's cgroup
    # plugin looks for. The namespace's own /etc/hosts is bound in a mount namespace of its own.
    nsenter --net="/run/netns/$netns" unshare --uts --mount --propagation private sh -c \
        "mount --bind /etc/netns/$netns/hosts /etc/hosts && hostname $node2 &&
         exec slurmd -f $node2_conf_dir/slurm.conf -N $node2" \
        || { log "slurmd for $node2 did not start:"; tail -n 5 "/var/log/slurm/slurmd-$node2.log"; exit 1; }
fi

# Ready when the node is idle (or already running jobs) in the debug partition.
for _ in $(seq 300); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n1 || true)
    case "$state" in idle|mix|alloc|plnd) break ;; esac
    sleep 0.2
done
case "$state" in
    idle|mix|alloc|plnd) ;;
    *)
        # A node left down by an earlier run (state saved across restarts).
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
        for _ in $(seq 100); do
            state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n1 || true)
            case "$state" in idle|mix|alloc|plnd) break ;; esac
            sleep 0.2
        done
        ;;
esac
node2_state=
for _ in $(seq 150); do
    node2_state=$(sinfo -h -n "$node2" -o %t 2>/dev/null | head -n1 || true)
    case "$node2_state" in idle|mix|alloc|plnd) break ;; down*|drain*) scontrol update NodeName="$node2" State=RESUME \
        >/dev/null 2>&1 || true ;; esac
    sleep 0.2
done
case "$node2_state" in
    idle|mix|alloc|plnd) ;;
    *) log "$node2 is not up (state '${node2_state:-none}'):"; tail -n 20 "/var/log/slurm/slurmd-$node2.log"; exit 1 ;;
esac
case "$state" in
    idle|mix|alloc|plnd) log "ready: $(sinfo --version), node $host $state, node $node2 $node2_state (partition multi), accounting in slurmdbd, memory limits by $memory_note" ;;
    *) log "the node is not up (state '${state:-none}'):"; tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; exit 1 ;;
esac
