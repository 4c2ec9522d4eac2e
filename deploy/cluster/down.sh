#!/usr/bin/env bash
# Stops what deploy/cluster/up.sh started: brokers, edges, control-plane replicas, then the leaf
# nodes, then the NATS cluster (SIGTERM, SIGKILL after 15 s). Only processes whose pid file
# up.sh wrote and whose command line names this run directory are signalled.
#
#   deploy/cluster/down.sh          stop; keep run/ (NATS stores, secrets, logs) for the next up
#   deploy/cluster/down.sh --clean  stop and delete run/
set -euo pipefail

# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"

CLEAN=0
for arg in "$@"; do
  case $arg in
    --clean) CLEAN=1 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "down.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

PIDS=$RUN_DIR/pids

# ours PID: the process is one up.sh started (its config lives in RUN_DIR), not a reused pid.
ours() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$RUN_DIR/etc/"; }

# stop ORDER: every process of one start order, together, then waits for them.
stop() {
  local pidfile pid name waited=0 pids=()
  for pidfile in "$PIDS/$1"-*.pid; do
    [[ -e $pidfile ]] || continue
    pid=$(cat "$pidfile")
    name=$(basename "$pidfile" .pid)
    name=${name#*-}
    if kill -0 "$pid" 2>/dev/null && ours "$pid"; then
      echo "down.sh: stopping $name (pid $pid)"
      kill -TERM "$pid"
      pids+=("$pid")
    fi
    rm -f "$pidfile"
  done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if ((waited >= 75)); then
        echo "down.sh: pid $pid ignored SIGTERM for 15 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
      waited=$((waited + 1))
    done
  done
}

if [[ -d $PIDS ]]; then
  # Reverse start order: brokers (5), edges (4), control (3), leaves (2), hub (1).
  for order in 5 4 3 2 1; do stop "$order"; done
else
  echo "down.sh: nothing to stop ($PIDS does not exist)"
fi

if ((CLEAN)); then
  rm -rf "$RUN_DIR"
  echo "down.sh: removed $RUN_DIR"
fi
