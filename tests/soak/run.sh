#!/usr/bin/env bash
# The soak test (not part of the default test run; docs/soak.md):
#
#   tests/soak/run.sh [--duration 10m] [--chaos-every 5s] [--seed N] [--work DIR]
#
# Builds the four helpers, cgp-helper-sim and the soak driver in release
# mode, then runs them against a real slapd and HAProxy (installed by
# tests/run.sh) and a scripted AMI server. Exits 0 only with zero protocol
# violations and every store reopened after a kill.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p cgp-auth -p cgp-filter -p cgp-banner -p cgp-balancer \
  -p cgp-helper-sim -p cgp-soak
exec "${CARGO_TARGET_DIR:-target}/release/cgp-soak" "$@"
