#!/usr/bin/env bash
# A bounded fuzzing run of every target (CI runs this): installs cargo-fuzz if missing, then
# runs each target for FUZZ_SECONDS (20) on the stable toolchain. A crash, or an input that
# takes more than 10 s, fails the run and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
mkdir -p target
for target in decode handshake rows config; do
  log=target/fuzz-$target.log
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 > "$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED (see fuzz/artifacts/$target)"
    exit 1
  fi
  echo "fuzz: $target ok: $(grep -E 'DONE' "$log" | tail -n 1)"
done
