# What deploy/cluster/up.sh starts and where, sourced by up.sh and down.sh. Every port is on
# 127.0.0.1. Override any variable from the environment (e.g. MERIDIAN_BIN=target/debug/meridian).
# shellcheck shell=bash

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CLUSTER_DIR/../.." && pwd)
# Generated configs, pids, logs, NATS stores and secrets (gitignored).
RUN_DIR=${RUN_DIR:-$CLUSTER_DIR/run}

# ---- NATS -----------------------------------------------------------------------------------
NATS_SERVER=${NATS_SERVER:-nats-server}
# The home cluster: JetStream domain and cluster name, and per node
# "name client_port route_port leafnode_port monitor_port".
HUB_DOMAIN=${HUB_DOMAIN:-hub}
HUB_NODES=(
  "hub-0 4222 6222 7422 8222"
  "hub-1 4223 6223 7423 8223"
  "hub-2 4224 6224 7424 8224"
)
# One leaf node per region, its JetStream domain named after the region:
# "region client_port monitor_port".
LEAVES=(
  "cn-shanghai  4230 8230"
  "eu-central-1 4231 8231"
  "us-east-1    4232 8232"
)

# ---- The registry bucket --------------------------------------------------------------------
BUCKET=${BUCKET:-meridian}
BUCKET_REPLICAS=${BUCKET_REPLICAS:-3}
# Each region's leaf holds a mirror of the hub's bucket stream (KV_$BUCKET), named
# KV_${BUCKET}_${region}. The store creates it when a daemon with [store.nats.read] opens and
# finds none; 1 makes up.sh create the mirrors up front with the same settings (e.g. to look at
# them with --nats-only). An existing mirror is left as it is either way.
PROVISION_MIRRORS=${PROVISION_MIRRORS:-0}

# ---- Meridian daemons (adjust here when the commands or their flags change) -----------------
# The binary; unset, up.sh builds target/release/meridian with cargo.
MERIDIAN_BIN=${MERIDIAN_BIN:-}
# The daemon commands; the config path is appended after each.
MERIDIAN_CONTROL_CMD=${MERIDIAN_CONTROL_CMD:-control -c}
MERIDIAN_EDGE_CMD=${MERIDIAN_EDGE_CMD:-bootstrap-edge -c}
MERIDIAN_BROKER_CMD=${MERIDIAN_BROKER_CMD:-broker -c}
# The line each daemon logs once it serves (a grep -E pattern).
# (`meridian control` and `meridian bootstrap-edge` run the roles of `meridian up`, whose line
# they log.)
CONTROL_READY=${CONTROL_READY:-meridian up: ready}
EDGE_READY=${EDGE_READY:-meridian up: ready}
BROKER_READY=${BROKER_READY:-meridian broker: ready}
# Control-plane replicas: "name admin_port metrics_port". Both use every hub node.
CONTROLS=(
  "control-1 8081 9100"
  "control-2 8091 9110"
)
# Bootstrap edges: "name http_port metrics_port region"; each reads the registry from its
# region's leaf (region "-": straight from the hub).
EDGES=(
  "edge-1 8080 9102 cn-shanghai"
  "edge-2 8090 9112 eu-central-1"
)
# One broker per instance: "instance region mqtt_port metrics_port"; each reads from its
# region's leaf mirror and writes (usage, sessions) to the hub through the leaf.
BROKERS=(
  "iot-sh-1  cn-shanghai  1883 9121"
  "iot-fra-1 eu-central-1 1884 9122"
  "iot-va-1  us-east-1    1885 9123"
)

# How long up.sh waits for one process to be ready before it gives up (seconds).
READY_TIMEOUT=${READY_TIMEOUT:-60}
