#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine and runs every check and test.
# Usage: scripts/test.sh   (CI runs this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools for ISA-L (nasm, autotools), from Debian's packages when missing.
scripts/build-deps.sh
# Real clients for the integration tests (fluent-logger, google-cloud-bigquery and
# google-cloud-bigquery-storage), pinned.
if ! .venv/bin/python -c 'import fluent, msgpack, google.cloud.bigquery, google.cloud.bigquery_storage_v1' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -r tests/clients/requirements.txt
fi
# Docker's fluentd log driver library (Go) for the real-client tests.
if [ -x tests/clients/install-go.sh ]; then
  tests/clients/install-go.sh
fi
# Fluent Bit, when the team's shared tools are beside the checkout.
if [ -z "${FLUENT_BIT_BIN:-}" ] && [ -x ../shared/tools/fluent-bit ]; then
  export FLUENT_BIT_BIN="$PWD/../shared/tools/fluent-bit"
fi

# Alert rules, with promtool (Debian's prometheus package).
deploy/prometheus/test.sh

# Every relative link in the docs resolves.
python3 scripts/check-links.py
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
# Tests that cannot run here (no Fluent Bit) write a line to this file; they count as skipped.
export BQFORWARD_SKIP_LOG
BQFORWARD_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$BQFORWARD_SKIP_LOG"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The criterion benches, once each in test mode, so they cannot rot.
cargo test --locked --bench codec --bench rows --bench request --bench router --bench filter
# Dockerfile, ECS task definitions and Terraform: static checks, checkov, hadolint.
scripts/check-deploy.sh
# The container image built from the Dockerfile and run with podman: health, traffic into the
# emulator, the buffer across kill and SIGTERM, read-only and non-root (docs/deploy.md).
# The container image, built from the Dockerfile and run with podman; it packs the dev build the
# tests above used (BQFORWARD_IMAGE_PROFILE=release checks the release binary instead).
BQFORWARD_IMAGE_PROFILE=${BQFORWARD_IMAGE_PROFILE:-dev} scripts/check-image.sh
# A bounded fuzzing run of every fuzz target (decoder, handshake, rows, config).
fuzz/run.sh

# One closing line for the whole run (cargo's last line is a doc-test binary's "0 passed"); a
# test that skipped itself is counted as skipped, not passed.
skipped=$(sort -u "$BQFORWARD_SKIP_LOG" | grep -c . || true)
if [ "$skipped" -gt 0 ]; then
  echo "skipped tests:"
  sort -u "$BQFORWARD_SKIP_LOG" | sed 's/^/  /'
fi
awk -v s="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
