#!/usr/bin/env bash
# What building bqforward needs besides cargo and a C compiler: ISA-L, the gzip of insertAll
# bodies (crate isal-rs, linked statically), is compiled from its source with nasm and
# autotools. Installs the missing ones from Debian's packages. scripts/test.sh, demo.sh,
# bench.sh and the Dockerfile's build stage run this before `cargo build`.
set -euo pipefail

packages=()
for pair in nasm:nasm autoconf:autoconf automake:automake libtoolize:libtool make:make; do
  command -v "${pair%%:*}" > /dev/null || packages+=("${pair##*:}")
done
[ ${#packages[@]} -eq 0 ] && exit 0

echo "installing build tools for ISA-L: ${packages[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
