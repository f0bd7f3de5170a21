#!/usr/bin/env bash
# Runs one fuzz target for a number of seconds, starting from the seeds in
# fuzz/seeds/TARGET (copied into the working corpus), and prints libFuzzer's
# final figures. Needs the nightly toolchain and cargo-fuzz (installed here
# when missing). Crashes land in fuzz/artifacts/TARGET/.
#   fuzz/run.sh TARGET SECONDS      e.g. fuzz/run.sh data 900
#   fuzz/run.sh all SECONDS         every target in turn
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")"
target=${1:?target: command, address, data, sasl, config, spool, proxy, journal_codec or all}
seconds=${2:?seconds}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
if [ "$target" = all ]; then
    for t in command address data sasl config spool proxy journal_codec; do "$self" "$t" "$seconds"; done
    exit 0
fi
mkdir -p "corpus/$target"
[ -d "seeds/$target" ] && cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 |
    tee "fuzz-$target.log" | grep -E "^(#[0-9]+.*DONE|stat::|==[0-9]+==|SUMMARY|Done)" || true
