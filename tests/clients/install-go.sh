#!/bin/sh
# Installs what tests/real_clients.rs needs to build tests/clients/go_sender: the Go toolchain
# and fluent-logger-golang (the library of Docker's fluentd log driver) from Debian, so the
# build works offline with GO111MODULE=off GOPATH=/usr/share/gocode. Does nothing when both
# are already there. Needs root (or sudo) only when it has something to install.
set -eu

LIB=/usr/share/gocode/src/github.com/fluent/fluent-logger-golang
PACKAGES="golang-go golang-github-fluent-fluent-logger-golang-dev"

if command -v go >/dev/null 2>&1 && [ -d "$LIB/fluent" ]; then
    exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
echo "install-go.sh: installing $PACKAGES" >&2
$SUDO apt-get update
# shellcheck disable=SC2086 # the package list is meant to split
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $PACKAGES
