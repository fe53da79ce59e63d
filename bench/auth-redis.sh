#!/usr/bin/env bash
# cgp-auth throttling on Redis against throttling on the local sled store
# (issue 17), in one run: the same logins (good password, cache hit,
# throttling on) through cgp-helper-sim, from returning clients and from a
# new client address at each login, alternating the two back ends ROUNDS
# times, against one redis-server on a free loopback port. Prints each run's
# line with the CPU per login of the helper and of redis-server, and the p99
# difference of the medians for each kind of client.
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

# Returning clients: 200 addresses, so the member's trusted clean answers
# (throttle.shared_recheck, 1s) spare most round trips. New clients: a new
# address at every login (10.a.b.c, distinct for 15 million logins), so
# every check is a round trip to Redis.
declare -A templates=(
  [returning]='VRFY (IMAP [192.0.2.{n%200}]) alice@example.test alicepw'
  [new]='VRFY (IMAP [10.{n%251}.{n%250}.{n%249}]) alice@example.test alicepw'
)
declare -A p99s cpus
redis_cpu() { redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
# The helper's CPU time (user + system, seconds) from bash's `times` once it
# exits; its stdout and stderr stay the simulator's.
wrap=(bash -c '"$@"; status=$?; times >"$0"; exit $status')
for round in $(seq "$rounds"); do
  for workload in returning new; do
    for backend in sled redis; do
      r0=$(redis_cpu)
      line=$(target/release/cgp-helper-sim --in-flight "$k" --generate "$n" \
        --request "${templates[$workload]}" \
        -- "${wrap[@]}" "$dir/cpu" target/release/cgp-auth --config "$dir/$backend.toml")
      r1=$(redis_cpu)
      cpu=$(awk -v r="$(awk -v a="$r0" -v b="$r1" 'BEGIN {print b - a}')" -v n="$n" '
        function s(t) { split(t, p, "m"); return p[1] * 60 + p[2] }
        NR == 2 {printf "helper %.1fus redis-server %.1fus", (s($1) + s($2)) / n * 1e6, r / n * 1e6}' "$dir/cpu")
      echo "round $round $workload $backend: $line CPU per login: $cpu (load $(cut -d' ' -f1 /proc/loadavg))"
      p99s[$workload-$backend]+="$(sed -E 's/.* p99=([0-9.]+)ms.*/\1/' <<<"$line") "
    done
  done
done
[ "$(redis-cli -p "$port" dbsize)" = 0 ] || { echo "Redis holds keys: the logins failed?"; exit 1; }
redis-cli -p "$port" info commandstats | grep -E "cmdstat_(hget|del|evalsha)" || { echo "Redis was never asked"; exit 1; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for workload in returning new; do
  s=$(median "${p99s[$workload-sled]}")
  r=$(median "${p99s[$workload-redis]}")
  echo "$workload clients, median p99: sled ${s}ms redis ${r}ms difference $(awk -v a="$r" -v b="$s" 'BEGIN {printf "%.3f", a - b}')ms (target <= 0.3ms)"
done
