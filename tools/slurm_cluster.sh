#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the `slurm` tests (tests/test_slurm.py) and CI:
# munged + slurmctld + slurmd from Debian's packages, no accounting (slurmdbd), no systemd.
#
#   tools/slurm_cluster.sh start   install what is missing, write the config, start the daemons
#   tools/slurm_cluster.sh stop    cancel the jobs, stop the daemons this script started
#
# Run as root (the daemons need it). The config lives in its own folder; /etc/slurm/slurm.conf,
# where job steps look for it, becomes a link to it (refused if a real file is there). The node offers this machine's CPUs and 80 %
# of its memory; the partition's time limit is 60 minutes, so that the profile's capping of
# requests to the cluster's limits (profiles/slurm/config.yaml) is exercised.
set -euo pipefail

STATE=${SSL_REPRO_SLURM_DIR:-/var/tmp/ssl-repro-slurm}   # config, spool, logs, PID files
CONF=$STATE/slurm.conf
say() { printf '[slurm_cluster] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
wait_for() { local tries=$(($1 * 5)); shift; for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.2; done; return 1; }
alive() { [[ -s $STATE/$1.pid ]] && [[ -d /proc/$(cat "$STATE/$1.pid") ]]; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    # their postinst cannot start services without systemd ("policy-rc.d denied"): harmless
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0   # one answers already
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid --force
    wait_for 10 bash -c 'munge -n | unmunge >/dev/null 2>&1' || die "munged did not start"
    cp /run/munge/munged.pid "$STATE/munged.pid"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", int($2 / 1024 * 0.8 / 1000) * 1000}' /proc/meminfo)
    install -d -o slurm -g slurm "$STATE" "$STATE/ctld" "$STATE/log"
    install -d "$STATE/spool"
    cat >"$CONF" <<EOF
# ssl-repro's one-node test cluster (tools/slurm_cluster.sh), not for production
ClusterName=ssl-repro
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=600
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=60 State=UP
EOF
    chmod 0644 "$CONF"
    # Job steps (srun inside a job) read the default path; link it where nothing else lives there.
    if [[ -L /etc/slurm/slurm.conf || ! -e /etc/slurm/slurm.conf ]]; then
        mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf
    else
        die "/etc/slurm/slurm.conf exists and is not this script's link; stop that cluster first"
    fi
    say "wrote $CONF (node $host: $cpus CPUs, $mem MB, partition debug up to 60 min)"
}

start() {
    install_packages
    mkdir -p "$STATE"
    start_munge
    write_conf
    export SLURM_CONF=$CONF
    alive slurmctld || slurmctld -f "$CONF"
    wait_for 30 bash -c 'scontrol ping 2>/dev/null | grep -q "is UP"' || die "slurmctld did not start (see $STATE/log/slurmctld.log)"
    alive slurmd || slurmd -f "$CONF"
    wait_for 60 bash -c '[[ $(sinfo -h -N -o %T 2>/dev/null | head -1) == idle* ]]' \
        || die "the node did not become idle (see $STATE/log/slurmd.log)"
    say "cluster up: export SLURM_CONF=$CONF"
}

stop() {
    export SLURM_CONF=$CONF
    if alive slurmctld; then scancel --full --quiet "$(squeue -h -o %i | tr '\n' ' ')" 2>/dev/null || true; fi
    for daemon in slurmd slurmctld munged; do
        if alive "$daemon"; then kill -TERM "$(cat "$STATE/$daemon.pid")" || true; fi
    done
    for daemon in slurmd slurmctld munged; do
        wait_for 20 bash -c "! [[ -d /proc/\$(cat '$STATE/$daemon.pid' 2>/dev/null || echo none) ]]" || true
        rm -f "$STATE/$daemon.pid"
    done
    [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$CONF" ]] && rm -f /etc/slurm/slurm.conf
    say "cluster stopped"
}

[[ $(id -u) -eq 0 ]] || die "run as root (the daemons need it)"
case ${1:-start} in
    start) start ;;
    stop) stop ;;
    *) die "usage: tools/slurm_cluster.sh start|stop" ;;
esac
