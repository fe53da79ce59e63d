#!/usr/bin/env bash
# cgp-auth on MX Proxy (issue 15): the latency cgp-auth adds over the fake
# MX Proxy's own at 32 in flight, in one run: a direct client loop doing what
# cgp-auth does per VRFY (the password grant; GET /auth at a user's first
# login) against cold VRFY (verdict cache off) through cgp-helper-sim,
# alternating, three rounds; prints each round and the medians.
# Usage: bench/auth-mxproxy.sh [REQUESTS] [USERS] [IN_FLIGHT]   (defaults 20000 2000 32)
# MXPROXY_DELAY_MS (default 5): how long the fake takes to answer.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p cgp-helper-sim -p cgp-auth
cargo build --release --quiet -p cgp-runtime --examples
uptime
cargo run --release --quiet -p cgp-tests --example auth_bench -- mxproxy "$@"
uptime
