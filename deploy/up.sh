#!/usr/bin/env bash
# The README's first command: sets up and runs the whole system on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/fetch-geoip.sh data/geoip
exec cargo run --release --locked -p meridian -- up --config deploy/meridian.toml "$@"
