#!/usr/bin/env bash
# Fails if insta left snapshots awaiting review (they must be reviewed and committed, never left pending).
set -euo pipefail
cd "$(dirname "$0")/.."
pending=$(find . -path ./target -prune -o \( -name '*.snap.new' -o -name '*.pending-snap' \) -print)
if [ -n "$pending" ]; then
  echo "insta snapshots awaiting review:" >&2
  echo "$pending" >&2
  exit 1
fi
echo "snapshots: none pending"
