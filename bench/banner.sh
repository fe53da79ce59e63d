#!/bin/sh
# cgp-banner benchmark (figures in docs/banner.md):
#  1. cached PBX banners at 16 in flight vs the null helper, same driver,
#     same run, reported as a ratio;
#     Cached banners with the CloudPBX source (fake CloudPBX) as a ratio of
#     the AMI source's rate (fake AMI), alternating in the same run;
#  2. AMI actions sent for a burst of 1,000 requests for 100 users with the
#     scripted AMI server answering in 5 ms.
# Usage: bench/banner.sh   (from the workspace top; honours CARGO_TARGET_DIR)
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p cgp-banner -p cgp-helper-sim
cargo build --release -p cgp-runtime --examples
uptime
cargo run --release -q -p cgp-tests --example bench_banner
uptime
