#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine and runs every check and test.
# Usage: scripts/test.sh   (CI runs this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools for ISA-L (nasm, autotools), from Debian's packages when missing.
scripts/build-deps.sh
# Real fluent clients for the integration tests, pinned.
if ! .venv/bin/python -c 'import fluent, msgpack' 2>/dev/null; then
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

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The criterion benches, once each in test mode, so they cannot rot.
cargo test --locked --bench codec --bench rows --bench request --bench router
# Dockerfile, ECS task definitions and Terraform: static checks, checkov, hadolint.
scripts/check-deploy.sh
# A bounded fuzzing run of the frame decoder and the handshake.
fuzz/run.sh

# One closing line for the whole run (cargo's last line is a doc-test binary's "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
