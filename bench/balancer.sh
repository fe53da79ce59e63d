#!/bin/sh
# cgp-balancer benchmark against a real HAProxy (Debian package `haproxy`).
# Counts the requests a SERVERS command sends to HAProxy (1 of 50 servers
# changed must be 1 change, not 50) and times reconciling 50 servers from
# scratch against the default 20 s deadline. Times are ratios to one direct
# `show servers state` round trip measured in the same run.
# Usage: bench/balancer.sh   (from the workspace top; uses $CARGO_TARGET_DIR)
set -eu
cd "$(dirname "$0")/.."
cargo build --release -q -p cgp-balancer --bins --examples
exec "${CARGO_TARGET_DIR:-target}/release/examples/balancer_bench"
