#!/usr/bin/env bash
# cgp-auth benchmark (issue 3): against a local slapd with distinct users, in
# one run: a direct ldap3 bind loop (baseline), cold VRFY through
# cgp-helper-sim (search+bind, and the DN-template fast path), cached VRFY
# against the null helper, and peak RSS at 256 in flight.
# Usage: bench/auth.sh [REQUESTS] [USERS] [IN_FLIGHT]   (defaults 20000 2000 32)
# With AUTH_BASE_BIN=/path/to/an/earlier/cgp-auth every helper row also runs
# that binary (either configuration shape) and prints the ratios;
# AUTH_ROUNDS=N takes medians over N rounds; AUTH_ROWS=cold,cached runs only
# those rows. The last lines print the issue's three targets plainly.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p cgp-helper-sim -p cgp-auth
cargo build --release --quiet -p cgp-runtime --examples
cargo run --release --quiet -p cgp-tests --example auth_bench -- "$@"
