#!/usr/bin/env bash
# cgp-auth on the SQL directory: against a local PostgreSQL (Debian
# `postgresql`, run as an unprivileged user in a temp dir) with distinct
# users ({SSHA} hashes), cold VRFY through cgp-helper-sim against a direct
# tokio-postgres loop running the same password query, two rounds.
# Usage: bench/auth-sql.sh [REQUESTS] [USERS] [IN_FLIGHT]   (defaults 20000 2000 32)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p cgp-helper-sim -p cgp-auth
cargo run --release --quiet -p cgp-tests --example auth_bench -- sql "$@"
