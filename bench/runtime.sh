#!/usr/bin/env bash
# Runtime benchmark (issue 2): the null helper on the runtime against a plain
# blocking read-reply loop with no runtime, at 1, 16 and 256 requests in
# flight, in the same run, each measured ROUNDS times alternately; the
# median rate of each is compared. Usage: bench/runtime.sh [REQUESTS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
rounds=${2:-3}
cargo build --release --quiet -p cgp-helper-sim
cargo build --release --quiet -p cgp-runtime --examples
sim=target/release/cgp-helper-sim
ex=target/release/examples

measure() { # helper in-flight -> "rate p99"
  "$sim" --generate "$requests" --in-flight "$2" --request 'FILE Queue/{n}.msg' -- "$ex/$1" |
    sed -E 's/.* rate=([0-9.]+)\/s .* p99=([0-9.]+)ms .*/\1 \2/'
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

printf '%-9s %14s %14s %7s %16s\n' in-flight "runtime req/s" "plain req/s" ratio "runtime p99 ms"
for n in 1 16 256; do
  rt=(); pl=(); p99=()
  for _ in $(seq "$rounds"); do
    read -r r p < <(measure null_helper "$n"); rt+=("$r"); p99+=("$p")
    read -r r _ < <(measure plain_loop "$n"); pl+=("$r")
  done
  r=$(printf '%s\n' "${rt[@]}" | median)
  b=$(printf '%s\n' "${pl[@]}" | median)
  p=$(printf '%s\n' "${p99[@]}" | median)
  printf '%-9s %14.0f %14.0f %7.2f %16.3f\n' "$n" "$r" "$b" "$(awk -v a="$r" -v b="$b" 'BEGIN {print a / b}')" "$p"
done
