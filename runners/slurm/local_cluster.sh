#!/usr/bin/env bash
# A single-node SLURM cluster with job accounting on this machine: for the SLURM tests
# (tests/test_slurm.py) and for trying `launcher=slurm` without a cluster.
#
#   runners/slurm/local_cluster.sh start    install if needed (Debian/Ubuntu, root) and start; idempotent
#   runners/slurm/local_cluster.sh stop     cancel the jobs, stop every daemon it started, by PID
#   runners/slurm/local_cluster.sh status   print the daemons and the node; exit 0 when usable
#
# There is no systemd to lean on: munged runs as the munge user, then mariadbd (the accounting
# database), slurmdbd, slurmctld and `slurmd -N localhost`, each a daemon with a PID file. Without
# accounting `sacct` fails and a cancelled job cannot be told from a running one, so accounting is
# always on. The configuration goes to /etc/slurm/{slurm,slurmdbd}.conf from the templates beside
# this script (the node line from `slurmd -C`); a slurm.conf that this script did not write is
# never overwritten. State, logs and PID files live under $INTERPBENCH_SLURM_STATE
# (default /var/lib/interpbench-slurm).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${INTERPBENCH_SLURM_STATE:-/var/lib/interpbench-slurm}
CONF_DIR=/etc/slurm
MARKER="Written by runners/slurm/local_cluster.sh"
WAIT_S=${INTERPBENCH_SLURM_WAIT_S:-90}
CRED_EXPIRE=${INTERPBENCH_SLURM_CRED_EXPIRE:-5}
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
MUNGE_PID=/run/munge/munged.pid
DB_PID=/run/mysqld/mysqld.pid
DB_SOCKET=/run/mysqld/mysqld.sock

say() { echo "local_cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: run COMMAND every half second until it succeeds.
wait_for() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$(( $(date +%s) + seconds ))
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) >= deadline )); then
            die "$what did not come up within ${seconds} s; logs under $STATE/log"
        fi
        sleep 0.5
    done
}

install_packages() {
    local missing=()
    for command in slurmctld slurmd sbatch sacct munged slurmdbd mariadbd; do
        command -v "$command" >/dev/null 2>&1 || missing+=("$command")
    done
    (( ${#missing[@]} == 0 )) && return 0
    [[ $(id -u) -eq 0 ]] || die "not root: cannot install ${PACKAGES[*]} (missing: ${missing[*]})"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${PACKAGES[*]} by hand (missing: ${missing[*]})"
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$STATE/log/apt.log" 2>&1 || die "apt-get update failed; see $STATE/log/apt.log"
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/log/apt.log" 2>&1 \
        || die "apt-get install failed; see $STATE/log/apt.log"
}

# render TEMPLATE: the template with its @NAME@ placeholders filled in, on stdout.
render() {
    local node_line
    node_line=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost/; s/ UpTime=.*//')
    sed -e "s|@STATE@|$STATE|g" -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" -e "s|@NODE_LINE@|$node_line|" \
        -e "s|@DB_PASSWORD@|$(cat "$STATE/db_password")|" "$1"
}

# write_config NAME MODE: install $CONF_DIR/NAME from NAME.in; returns 0 when it changed.
write_config() {
    local name=$1 mode=$2 target="$CONF_DIR/$1" fresh
    fresh=$(render "$HERE/$name.in")
    if [[ -e $target ]] && ! grep -q "$MARKER" "$target"; then
        die "$target exists and was not written by this script; not touching a real cluster's configuration"
    fi
    if [[ -e $target ]] && [[ $(cat "$target") == "$fresh" ]]; then
        return 1
    fi
    mkdir -p "$CONF_DIR"
    printf '%s\n' "$fresh" >"$target.tmp"
    chmod "$mode" "$target.tmp"
    mv "$target.tmp" "$target"
    return 0
}

start_munge() {
    alive "$MUNGE_PID" && return 0
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_database() {
    if ! alive "$DB_PID"; then
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1
        fi
        setsid mariadbd --user=mysql --datadir=/var/lib/mysql --pid-file="$DB_PID" --socket="$DB_SOCKET" \
            --skip-networking --innodb-buffer-pool-size=32M >>"$STATE/log/mariadb.log" 2>&1 </dev/null &
        wait_for 60 mariadbd mariadb-admin --socket="$DB_SOCKET" ping
    fi
    mariadb --socket="$DB_SOCKET" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(cat "$STATE/db_password")';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$(cat "$STATE/db_password")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n 1; }

node_usable() {
    case "$(node_state)" in
        idle|mixed|allocated|completing) return 0 ;;
        *) return 1 ;;
    esac
}

start() {
    mkdir -p "$STATE/log" "$STATE/run" "$STATE/spool/slurmctld" "$STATE/spool/slurmd"
    install_packages
    if [[ ! -s $STATE/db_password ]]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db_password")
    fi
    local changed=0
    write_config slurm.conf 0644 && changed=1
    write_config slurmdbd.conf 0600 && changed=1
    if (( changed )); then  # a new configuration: the SLURM daemons start again with it
        stop_daemons "slurmd:$STATE/run/slurmd.pid" "slurmctld:$STATE/run/slurmctld.pid" \
            "slurmdbd:$STATE/run/slurmdbd.pid"
    fi
    start_munge
    start_database
    if ! alive "$STATE/run/slurmdbd.pid"; then
        slurmdbd
        wait_for 60 slurmdbd sacctmgr -n list cluster
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx interpbench; then
        sacctmgr -i add cluster interpbench >/dev/null
    fi
    if ! alive "$STATE/run/slurmctld.pid"; then
        slurmctld
        wait_for 60 slurmctld scontrol ping
    fi
    if ! alive "$STATE/run/slurmd.pid"; then
        slurmd -N localhost
    fi
    local deadline=$(( $(date +%s) + WAIT_S ))
    until node_usable; do
        case "$(node_state)" in
            down*|drain*|drained*|fail*)
                scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
        esac
        if (( $(date +%s) >= deadline )); then
            die "the node is '$(node_state)', not idle, after ${WAIT_S} s; logs under $STATE/log"
        fi
        sleep 0.5
    done
    say "cluster up: node localhost $(node_state); logs under $STATE/log"
}

# stop_daemons NAME:PIDFILE...: SIGTERM to each one running, then SIGKILL to any left after 20 s.
stop_daemons() {
    local pair name pidfile pids=() names=() files=()
    for pair in "$@"; do
        name=${pair%%:*} pidfile=${pair#*:}
        alive "$pidfile" || continue
        pids+=("$(cat "$pidfile")") names+=("$name") files+=("$pidfile")
        kill -TERM "${pids[-1]}" 2>/dev/null || true
    done
    local deadline=$(( $(date +%s) + 20 )) i
    for i in "${!pids[@]}"; do
        while kill -0 "${pids[$i]}" 2>/dev/null && (( $(date +%s) < deadline )); do
            sleep 0.2
        done
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM; killing it"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
        rm -f "${files[$i]}"
    done
}

stop() {
    if alive "$STATE/run/slurmctld.pid"; then  # no job outlives its cluster
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 40); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemons "slurmd:$STATE/run/slurmd.pid" "slurmctld:$STATE/run/slurmctld.pid" \
        "slurmdbd:$STATE/run/slurmdbd.pid"
    stop_daemons "mariadbd:$DB_PID" "munged:$MUNGE_PID"
    say "cluster stopped"
}

status() {
    local ok=0 name pidfile
    for pair in "munged:$MUNGE_PID" "mariadbd:$DB_PID" "slurmdbd:$STATE/run/slurmdbd.pid" \
                "slurmctld:$STATE/run/slurmctld.pid" "slurmd:$STATE/run/slurmd.pid"; do
        name=${pair%%:*} pidfile=${pair#*:}
        if alive "$pidfile"; then
            echo "$name: running (pid $(cat "$pidfile"))"
        else
            echo "$name: not running"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null 2>&1 && node_usable; then
        echo "node localhost: $(node_state)"
    else
        echo "node localhost: not usable"
        ok=1
    fi
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
