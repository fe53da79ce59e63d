#!/usr/bin/env bash
# cgp-auth throttling on Redis against throttling on the local sled store
# (issue 17), in one run: the same logins (good password, cache hit, 200
# client addresses, throttling on) through cgp-helper-sim, alternating the
# two back ends ROUNDS times, against one redis-server on a free loopback
# port. Prints each run's line and the p99 difference of the medians.
# Usage: bench/auth-redis.sh [REQUESTS] [IN_FLIGHT] [ROUNDS]   (defaults 50000 32 3)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50000}
k=${2:-32}
rounds=${3:-3}
cargo build --release --quiet -p cgp-helper-sim -p cgp-auth
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
rpid=$!
trap 'kill "$rpid" 2>/dev/null; wait "$rpid" 2>/dev/null; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done

for backend in sled redis; do
  cat >"$dir/$backend.toml" <<TOML
[runtime]
stats_interval = "0s"
[log]
journald = false
level = "warn"
file = "$dir/$backend.log"
[throttle]
trusted_networks = []
[store]
path = "$dir/$backend-state"
backend = "$backend"
[store.redis]
urls = ["redis://127.0.0.1:$port/0"]
[[directory.static.users]]
name = "alice@example.test"
password = "{SSHA}X2W8QR6LP+CsG3vDkc6H+BFqXBKaduqD"
TOML
done

declare -A p99s
for round in $(seq "$rounds"); do
  for backend in sled redis; do
    line=$(target/release/cgp-helper-sim --in-flight "$k" --generate "$n" \
      --request 'VRFY (IMAP [192.0.2.{n%200}]) alice@example.test alicepw' \
      -- target/release/cgp-auth --config "$dir/$backend.toml")
    echo "round $round $backend: $line (load $(cut -d' ' -f1 /proc/loadavg))"
    p99s[$backend]+="$(sed -E 's/.* p99=([0-9.]+)ms.*/\1/' <<<"$line") "
  done
done
[ "$(redis-cli -p "$port" dbsize)" = 0 ] || { echo "Redis holds keys: the logins failed?"; exit 1; }
redis-cli -p "$port" info commandstats | grep -E "cmdstat_(hget|del|evalsha)" || { echo "Redis was never asked"; exit 1; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
s=$(median "${p99s[sled]}")
r=$(median "${p99s[redis]}")
echo "median p99: sled ${s}ms redis ${r}ms difference $(awk -v a="$r" -v b="$s" 'BEGIN {printf "%.3f", a - b}')ms (target <= 0.3ms)"
