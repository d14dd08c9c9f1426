#!/usr/bin/env bash
# A real Slurm cluster on this machine, for the tests (tests/slurm/): munged, slurmctld and
# one slurmd per node, all state under DIR, stopped with everything they started.
#
#   scripts/slurm_cluster.sh start DIR [--nodes 1|2]
#   scripts/slurm_cluster.sh exec DIR [--node N] -- COMMAND...   # a client of the cluster
#   scripts/slurm_cluster.sh stop DIR
#
# Each node is a network namespace made here (`ip netns add`), so the cluster's ports and
# addresses are its own and several clusters (other worktrees, other test runs) never meet:
#   --nodes 1   one node, node1 at 192.0.2.1 in a namespace of its own: this machine's CPUs
#               and memory.
#   --nodes 2   node1 and node2 at 192.0.2.1 and 192.0.2.2 (TEST-NET-1, RFC 5737: never
#               routed), two namespaces joined by a veth pair and nothing else; this
#               machine's CPUs and memory shared out between them. slurmctld runs beside
#               node1. DIR/hosts (an Open MPI hostfile), DIR/rsh-agent (runs a command in a
#               node's namespace) and DIR/mpirun-args (the Open MPI settings over the test
#               subnet) let `lmtune launch --nnodes 2` run across the same two nodes.
# The daemons enter the namespaces with `nsenter --net` (not `ip netns exec`, which mounts a
# fresh /sys without the cgroup file systems slurmd needs even with proctrack/linuxproc).
# Without CAP_NET_ADMIN (no namespaces), --nodes 1 runs in this machine's own network on
# free ports, and --nodes 2 writes the reason to DIR/unavailable (the tests then skip).
#
# Settings that differ from a production slurm.conf, and why: everything runs as root
# (SlurmUser=root; slurmd must be root anyway); munged and the daemons keep their sockets,
# state, spool and logs under DIR; job ids start at a random number (FirstJobId); ProctrackType=proctrack/linuxproc and TaskPlugin=task/none
# (no cgroups); AuthInfo cred_expire=10, because a requeued job may start again only once
# its credentials have expired (120 s by default); the schedulers run every second; no
# accounting database. stop cancels the jobs, stops the daemons, ends every process that
# still runs with this cluster's SLURM_CONF in its environment, and removes the namespaces.
set -euo pipefail

usage() { echo "usage: $0 start DIR [--nodes 1|2] | exec DIR [--node N] -- COMMAND... | stop DIR" >&2; exit 2; }
(($# >= 2)) || usage
cmd=$1
dir=$(realpath -m "$2")
shift 2
conf="$dir/etc/slurm.conf"
tag=$(printf '%s' "$dir" | sha1sum | cut -c1-8)
ns_name() { echo "lmtune-slurm-$tag-$1"; }

log() { echo "slurm_cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# Runs "$@" in node N's network namespace (or here when the cluster has none).
in_node() {
  local n=$1
  shift
  if [[ -f "$dir/netns" ]]; then
    SLURM_CONF="$conf" nsenter --net="/run/netns/$(ns_name "$n")" "$@"
  else
    SLURM_CONF="$conf" "$@"
  fi
}

# Starts the daemon "$@" in node N's namespace, in the background, its output in LOG, and
# records its pid (exec all the way down: the pid is the daemon's).
spawn_in_node() {
  local n=$1 out=$2 name=$3
  shift 2
  if [[ -f "$dir/netns" ]]; then
    (exec env SLURM_CONF="$conf" nsenter --net="/run/netns/$(ns_name "$n")" "$@") >"$out" 2>&1 &
  else
    (exec env SLURM_CONF="$conf" "$@") >"$out" 2>&1 &
  fi
  echo "$! $name" >>"$dir/pids"
}

# The nodes' namespaces. node1's end of a veth pair holds 192.0.2.1; the other end goes to
# node2's namespace, or stays beside it with one node (an IPv4 address besides the
# loopback's, without which the daemons' getaddrinfo(AI_ADDRCONFIG) finds no IPv4 at all).
# Fails, leaving nothing behind, where namespaces or links cannot be made.
make_network() {
  local nodes=$1 other=1 n
  ((nodes == 2)) && other=2
  for n in $(seq 1 "$nodes"); do
    ip netns add "$(ns_name "$n")" || { drop_network; return 1; }
  done
  {
    ip link add "lmt${tag}a" type veth peer name "lmt${tag}b" &&
      ip link set "lmt${tag}a" netns "$(ns_name 1)" &&
      ip link set "lmt${tag}b" netns "$(ns_name "$other")" &&
      ip -n "$(ns_name 1)" addr add 192.0.2.1/24 dev "lmt${tag}a" &&
      { ((nodes == 1)) || ip -n "$(ns_name 2)" addr add 192.0.2.2/24 dev "lmt${tag}b"; } &&
      ip -n "$(ns_name 1)" link set lo up &&
      { ((nodes == 1)) || ip -n "$(ns_name 2)" link set lo up; } &&
      ip -n "$(ns_name 1)" link set "lmt${tag}a" up &&
      ip -n "$(ns_name "$other")" link set "lmt${tag}b" up
  } || { drop_network; return 1; }
}

# Removes the namespaces (and so the veth pair).
drop_network() {
  local n
  for n in 1 2; do ip netns del "$(ns_name "$n")" 2>/dev/null || true; done
  ip link del "lmt${tag}a" 2>/dev/null || true
}

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # SECONDS WHAT COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

no_jobs() { [[ -z $(in_node 1 squeue -h -o %i 2>/dev/null) ]]; }

nodes_idle() {
  local states
  states=$(in_node 1 sinfo -h -N -o '%T' 2>/dev/null) || return 1
  [[ -n $states ]] && ! grep -qv '^idle$' <<<"$states"
}

start() {
  local nodes=1
  while (($#)); do
    case $1 in
      --nodes) nodes=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ $nodes == 1 || $nodes == 2 ]] || die "--nodes $nodes: 1 or 2"
  [[ -e $dir/pids ]] && die "$dir already holds a cluster (run: $0 stop $dir)"
  for tool in munged slurmctld slurmd sbatch nsenter; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/deps.sh installs Slurm and munge)"
  done
  [[ $(id -u) == 0 ]] || die "slurmd must run as root (it starts the jobs as their users); this is uid $(id -u)"
  rm -rf "$dir"
  # A start that fails stops whatever it had started.
  trap 'status=$?; if ((status != 0)); then stop; fi' EXIT
  mkdir -p "$dir"/{etc,munge,run,state,spool,log,tmp}
  chmod 755 "$dir" "$dir/run"
  chmod 700 "$dir/munge"
  : >"$dir/pids"

  # The network: one namespace per node, when this process may make them.
  local addrs=(127.0.0.1) port_ctld=6817 port_d=6818
  if make_network "$nodes" 2>"$dir/log/netns.err"; then
    touch "$dir/netns"
    addrs=(192.0.2.1 192.0.2.2)
  elif ((nodes == 2)); then
    echo "two nodes need two network namespaces, which cannot be made here (CAP_NET_ADMIN is needed):" \
      "$(tr '\n' ' ' <"$dir/log/netns.err")" >"$dir/unavailable"
    rm -f "$dir/pids"
    log "$(cat "$dir/unavailable")"
    return 0
  else
    log "no network namespace ($(tr '\n' ' ' <"$dir/log/netns.err")); one node on free ports here"
    port_ctld=$(free_port)
    port_d=$(free_port)
  fi

  # munge: a fresh key, its own socket.
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/run/munge.sock" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
  wait_for 10 munged test -S "$dir/run/munge.sock" -a -s "$dir/run/munged.pid" || die "munged did not start: $(tail -5 "$dir/log/munged.log")"
  echo "$(cat "$dir/run/munged.pid") munged" >>"$dir/pids"

  # slurm.conf: this machine's CPUs and memory, shared out between the nodes.
  local cpus mem host
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
  host=$(hostname -s)
  {
    echo "# written by scripts/slurm_cluster.sh for the tests (see there)"
    echo "ClusterName=lmtune"
    # Job ids of their own: Open MPI names its shared-memory files by the job id, and other
    # test clusters may run on this machine at the same time.
    echo "FirstJobId=$(((RANDOM << 15 | RANDOM) % 60000000 + 1000))"
    echo "SlurmctldHost=$host(${addrs[0]})"
    echo "SlurmctldPort=$port_ctld"
    echo "SlurmdPort=$port_d"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$dir/run/munge.sock,cred_expire=10"
    echo "StateSaveLocation=$dir/state"
    echo "SlurmdSpoolDir=$dir/spool/%n"
    echo "TmpFS=$dir/tmp/%n"
    echo "SlurmctldPidFile=$dir/run/slurmctld.pid"
    echo "SlurmdPidFile=$dir/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$dir/log/slurmctld.log"
    echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "MpiDefault=none"
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=bf_interval=1,sched_interval=1"
    echo "KillWait=30"
    echo "ReturnToService=2"
    echo "SlurmdParameters=config_overrides"
    echo "MailProg=/bin/true"
    local n
    for n in $(seq 1 "$nodes"); do
      echo "NodeName=node$n NodeAddr=${addrs[n - 1]} NodeHostname=$host CPUs=$(((cpus + nodes - 1) / nodes))" \
        "RealMemory=$((mem / nodes)) State=UNKNOWN"
      mkdir -p "$dir/spool/node$n" "$dir/tmp/node$n"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$conf"

  spawn_in_node 1 "$dir/log/slurmctld.out" slurmctld -D -i
  wait_for 30 slurmctld in_node 1 scontrol ping || die "slurmctld did not start: $(tail -5 "$dir/log/slurmctld.out")"
  for n in $(seq 1 "$nodes"); do
    spawn_in_node "$n" "$dir/log/slurmd-node$n.out" slurmd -D -N "node$n"
  done
  wait_for 30 "idle nodes" nodes_idle || die "the nodes did not come up: $(in_node 1 sinfo -N 2>&1;
    tail -5 "$dir/log/slurmd-node1.out")"

  if ((nodes == 2)); then
    printf '192.0.2.1 slots=%s\n192.0.2.2 slots=%s\n' "$cpus" "$cpus" >"$dir/hosts"
    cat >"$dir/rsh-agent" <<EOF
#!/bin/sh
# Open MPI's rsh agent for this test cluster: HOST COMMAND... runs COMMAND in HOST's namespace.
host=\$1
shift
case \$host in
  192.0.2.1) n=1 ;;
  192.0.2.2) n=2 ;;
  *) echo "rsh-agent: no test node \$host" >&2; exit 1 ;;
esac
echo "\$host" >>"$dir/log/rsh-agent.log"
exec nsenter --net=/run/netns/lmtune-slurm-$tag-\$n /bin/sh -c "\$*"
EOF
    chmod 755 "$dir/rsh-agent"
    echo "--mca plm_rsh_agent $dir/rsh-agent --mca btl tcp,self --mca btl_tcp_if_include 192.0.2.0/24" \
      "--mca oob_tcp_if_include 192.0.2.0/24" >"$dir/mpirun-args"
  fi
  log "up: $nodes node(s) in $dir ($(in_node 1 sinfo -h -N -o '%N %T' | tr '\n' ' '))"
}

stop() {
  [[ -e $dir/etc ]] || { log "no cluster in $dir"; return 0; }
  if [[ -s $dir/pids ]]; then
    # the jobs first, while slurmctld is there to cancel them
    local jobs
    jobs=$(in_node 1 squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      in_node 1 scancel $jobs 2>/dev/null || true
      wait_for 40 "the jobs to end" no_jobs || log "jobs still listed after 40 s: $(in_node 1 squeue -h 2>&1)"
    fi
    local pid name
    while read -r pid name; do
      kill "$pid" 2>/dev/null || true
    done <"$dir/pids"
    while read -r pid name; do
      wait_for 10 "$name to stop" bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
    done <"$dir/pids"
  fi
  # Whatever this cluster started and left running (slurmstepd, the ranks of a job):
  # every process with this cluster's SLURM_CONF in its environment.
  local p
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} == "$$" ]] && continue
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$conf"; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  drop_network
  rm -f "$dir/pids"
  log "stopped the cluster in $dir"
}

case $cmd in
  start) start "$@" ;;
  stop) stop ;;
  exec)
    node=1
    while (($#)) && [[ $1 != -- ]]; do
      case $1 in
        --node) node=$2; shift 2 ;;
        *) usage ;;
      esac
    done
    (($# >= 2)) || usage
    shift
    [[ -e $dir/pids ]] || die "no cluster running in $dir"
    in_node "$node" "$@"
    ;;
  *) usage ;;
esac
