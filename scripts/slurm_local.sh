#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying sweeps (experiments/sweep.py
# --executor=slurm) and for the tests: Debian's slurm-wlm and munge, run as root.
#
#   bash scripts/slurm_local.sh start   # installs the packages if missing, starts munged,
#                                       # slurmctld and slurmd; prints SLURM_CONF=...
#   bash scripts/slurm_local.sh stop
#
# Everything SLURM keeps (its config, state, spool and logs) is under $CMTA_SLURM_DIR
# (default /tmp/cmta-slurm); commands find the cluster through SLURM_CONF, which `start`
# prints. One node with every core of this machine, one partition `local`.
set -euo pipefail
action="${1:-start}"
state="${CMTA_SLURM_DIR:-/tmp/cmta-slurm}"
conf="$state/slurm.conf"

stop() {
  for name in slurmd slurmctld; do
    if [ -f "$state/$name.pid" ]; then
      kill "$(cat "$state/$name.pid")" 2>/dev/null || true
      rm -f "$state/$name.pid"
    fi
  done
}

if [ "$action" = stop ]; then
  stop
  exit 0
fi
if [ "$action" != start ]; then
  echo "usage: $0 start|stop" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: the local SLURM cluster runs as root (slurmd starts jobs as their user)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

# munge authenticates SLURM's messages: one key, one daemon.
if ! pgrep -x munged >/dev/null; then
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
fi

stop
mkdir -p "$state/state" "$state/spool" "$state/log"
host="$(hostname -s)"
cpus="$(nproc)"
memory_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
cat > "$conf" <<CONF
ClusterName=cmta
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobRequeue=1
ReturnToService=2
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$conf"
/usr/sbin/slurmctld -f "$conf"
/usr/sbin/slurmd -f "$conf"
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -q -E "^(idle|mixed|allocated)"; then
    echo "SLURM_CONF=$conf"
    exit 0
  fi
  sleep 0.2
done
echo "error: SLURM did not come up; see $state/log/" >&2
exit 1
