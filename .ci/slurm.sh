#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm tests (tests/e2e/test_slurm.py) and CI.
# Idempotent: installs Debian's slurmctld, slurmd, slurm-client and munge when missing (needs root and apt),
# writes /etc/slurm/slurm.conf for this host (CPUs and memory as `slurmd -C` reports them), starts munged,
# slurmctld and slurmd when they are not running, and returns once `sinfo` shows the node idle.
# Exit status 0: Slurm is up; 3: Slurm is not there and cannot be installed here (not root, no apt);
# anything else: the setup failed (the daemons' logs are in /var/log/slurm).
set -euo pipefail

say() { echo "slurm.sh: $*"; }
node_state() { sinfo -h -N -o %T 2>/dev/null | head -n1; }

if command -v sinfo >/dev/null && [[ "$(node_state)" == idle* || "$(node_state)" == mixed* ]]; then
  say "Slurm is up: $(sinfo -h -N -o '%N %T %c CPUs %m MB')"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  say "Slurm is not running and installing it needs root"; exit 3
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null; then
  if ! command -v apt-get >/dev/null; then say "no apt-get to install Slurm with"; exit 3; fi
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || { say "apt-get update failed"; exit 3; }
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { say "apt-get install failed"; exit 3; }
fi

# munge: the authentication every Slurm message carries
if [[ ! -s /etc/munge/munge.key ]]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key; else create-munge-key -f; fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
fi

# slurm.conf for this one node
host=$(hostname -s)
# NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..; reached over the loopback (the host name may not resolve)
node_line="$(slurmd -C | head -n1) NodeAddr=127.0.0.1"
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
conf=$(cat <<CONF
# written by .ci/slurm.sh: a one-node test cluster
ClusterName=nucseg
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=600
KillWait=10
${node_line} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
)
if [[ ! -f /etc/slurm/slurm.conf ]] || [[ "$(cat /etc/slurm/slurm.conf)" != "$conf" ]]; then
  say "writing /etc/slurm/slurm.conf: ${node_line}"
  printf '%s\n' "$conf" > /etc/slurm/slurm.conf
  restart=1
fi

running() { [[ -f "/run/slurm/$1.pid" ]] && kill -0 "$(cat "/run/slurm/$1.pid")" 2>/dev/null; }
for daemon in slurmctld slurmd; do
  if running "$daemon" && [[ -n "${restart:-}" ]]; then
    say "restarting $daemon (new slurm.conf)"; kill "$(cat "/run/slurm/$daemon.pid")"; sleep 1
  fi
  if ! running "$daemon"; then
    say "starting $daemon"
    "/usr/sbin/$daemon"
  fi
done

for _ in $(seq 120); do
  state=$(node_state || true)
  case "$state" in
    idle*|mixed*) say "Slurm is up: $(sinfo -h -N -o '%N %T %c CPUs %m MB')"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
say "the node did not become idle (state: ${state:-none}); see /var/log/slurm/"
exit 1
