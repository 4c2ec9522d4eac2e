#!/usr/bin/env bash
# Reproduces the "Bootstrap edge: HTTP load" figures in docs/BENCHMARKS.md: the edge (seeded
# with a 100,000-device fleet, real DB-IP GeoIP data, trusted-proxy X-Forwarded-For from several
# continents) against a bare hyper server returning a fixed body, in the same run, at 64 and
# 256 connections, with wrk (apt-get install -y wrk).
#
# Usage: bench/bootstrap-http.sh            (DURATION=15s ROUNDS=3 DEVICES=100000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-3}
DEVICES=${DEVICES:-100000}
THREADS=${THREADS:-2}
EDGE=127.0.0.1:18080
BARE=127.0.0.1:18081
OUT=${OUT:-target/bootstrap-http}

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
deploy/fetch-geoip.sh data/geoip
cargo build --release --locked -p meridian-edge --examples
mkdir -p "$OUT"

target/release/examples/bare_hyper "$BARE" >"$OUT/bare.log" 2>&1 &
bare_pid=$!
target/release/examples/edge_load "$EDGE" "$DEVICES" data/geoip >"$OUT/edge.log" 2>&1 &
edge_pid=$!
trap 'kill "$bare_pid" "$edge_pid" 2>/dev/null || true' EXIT

# The edge seeds its registry first (a few seconds); wait for both to listen.
for _ in $(seq 1 600); do
  if grep -q listening "$OUT/edge.log" && grep -q listening "$OUT/bare.log"; then break; fi
  sleep 0.2
done
grep -q listening "$OUT/edge.log" || { cat "$OUT/edge.log" >&2; exit 1; }

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, kernel $(uname -r)"
echo "wrk -t$THREADS -d$DURATION --latency -s bench/bootstrap-http.lua, $DEVICES devices"
# Bare and edge alternate within each round, so drift in background load hits both alike; the
# load average before each run is printed so a disturbed run can be spotted. cpu/req is the
# server process's user+system CPU time per request: steadier than req/s on a shared machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)
printf '%-6s %-5s %-5s %10s %9s %9s %8s %11s %6s\n' \
  round conns server 'req/s' p50 p99 non2xx 'cpu/req us' load1
: >"$OUT/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for conns in 64 256; do
    for server in bare edge; do
      addr=$BARE pid=$bare_pid
      [ "$server" = edge ] && addr=$EDGE pid=$edge_pid
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
      printf '%-6s %-5s %-5s %10s %9s %9s %8s %11s %6s\n' \
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
done
