#!/usr/bin/env bash
# Checks and unit-tests the alert rules with promtool (Debian package `prometheus`), installing
# it when missing. Usage: deploy/prometheus/test.sh
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  # promtool only: skip the recommended extras, and do not start a Prometheus server.
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool check rules alerts.yml
promtool test rules alerts_test.yml
