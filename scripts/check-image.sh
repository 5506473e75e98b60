#!/usr/bin/env bash
# Builds the container image from the repository's Dockerfile and runs it as users do, with
# Debian's podman (as root, no daemon; CI has no Docker engine and no image registry):
#   1. installs podman, runc and mmdebstrap from Debian's packages when missing;
#   2. makes the runtime base the Dockerfile names (gcr.io/distroless/cc-debian13:nonroot) from
#      Debian trixie's packages with mmdebstrap, once per machine (kept while its recipe holds);
#   3. builds the release binary with the Dockerfile's own command (`cargo build --release
#      --locked -p bqforward`, the toolchain its rust:X.Y image names) and the image with
#      BQFORWARD_BUILD=prebuilt: no registry serves the Rust image here (docs/deploy.md);
#   4. deploy/checks/check_image.py runs the image: HEALTHCHECK, Forward traffic with acks into
#      the BigQuery emulator (in a second container) through the default config and a mounted
#      fluentd config, the file buffer on the VOLUME across `podman kill`, SIGTERM within ECS's
#      stopTimeout, read-only root filesystem, uid 65532, no shell.
# Podman's settings for this sandbox (runc, cgroupfs, ulimits) go to target/check-image/
# through CONTAINERS_CONF; nothing under /etc changes.
# Usage: scripts/check-image.sh      Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$PWD/target/check-image
RUNTIME_BASE=gcr.io/distroless/cc-debian13:nonroot
# One image tag per checkout, so checks in two worktrees on one machine do not swap images.
IMAGE=localhost/bqforward-check:$(printf %s "$PWD" | sha256sum | cut -c1-12)
started=$SECONDS

step() { # step NAME: print a heading and remember when it started
  step_name=$1
  step_started=$SECONDS
  echo
  echo "== $step_name"
}
done_step() { echo "== $step_name: ok ($((SECONDS - step_started))s)"; }

step "podman, runc, mmdebstrap"
packages=()
for pair in podman:podman runc:runc mmdebstrap:mmdebstrap; do
  command -v "${pair%%:*}" >/dev/null || packages+=("${pair##*:}")
done
if [ ${#packages[@]} -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing ${packages[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
fi
mkdir -p "$WORK"
# crun 1.8 refuses this machine's hybrid cgroups (runc does not); root here lacks
# CAP_SYS_RESOURCE, so containers get limits within the hard ones (nofile 20000); there is no
# systemd or journald.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
podman --version
done_step

step "runtime base $RUNTIME_BASE"
if ! grep -q "^FROM $RUNTIME_BASE\$" Dockerfile; then
  echo "the Dockerfile's runtime stage is no longer FROM $RUNTIME_BASE: teach this script to make its base"
  exit 1
fi
# distroless cc-debian13: glibc, libgcc, libstdc++, OpenSSL, CA certificates, tzdata, netbase,
# users root, nobody and nonroot (65532), no shell and no package manager.
base_packages=base-files,netbase,tzdata,libc6,libgcc-s1,libstdc++6,libssl3t64,ca-certificates
# The hook runs in mmdebstrap's shell with the new root as $1.
# shellcheck disable=SC2016
base_hook='set -e
mkdir -p "$1/etc/ssl/certs" "$1/home/nonroot" "$1/tmp"
chmod 1777 "$1/tmp"
cat "$1"/usr/share/ca-certificates/mozilla/*.crt >"$1/etc/ssl/certs/ca-certificates.crt"
printf "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >"$1/etc/passwd"
printf "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n" >"$1/etc/group"
chown 65532:65532 "$1/home/nonroot"
chmod 700 "$1/home/nonroot"'
recipe=$(printf '%s\n' trixie "$base_packages" "$base_hook" | sha256sum | cut -c1-16)
# Checks in two checkouts on one machine make the base once and build images one at a time
# (the clean-up after a build removes the images that build left).
exec 9>"${TMPDIR:-/tmp}/bqforward-check-image.lock"
flock 9
label=$(podman image inspect --format '{{index .Labels "bqforward.check-image.recipe"}}' "$RUNTIME_BASE" 2>/dev/null || true)
if [ "$label" = "$recipe" ]; then
  echo "made here before (recipe $recipe), kept"
else
  mmdebstrap --variant=extract --mode=root --format=tar --include="$base_packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --customize-hook="$base_hook" \
    trixie - 2>"$WORK/mmdebstrap.log" |
    podman import --change USER=65532:65532 --change WORKDIR=/home/nonroot \
      --change ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --change ENV=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      --change "LABEL=bqforward.check-image.recipe=$recipe" - "$RUNTIME_BASE" >"$WORK/import.log" 2>&1 ||
    { tail -n 20 "$WORK/mmdebstrap.log" "$WORK/import.log"; exit 1; }
  echo "made from Debian trixie's packages with mmdebstrap (recipe $recipe)"
fi
base_glibc=$(podman run --rm --entrypoint /lib64/ld-linux-x86-64.so.2 "$RUNTIME_BASE" --version 2>/dev/null |
  sed -n '1s/.*release version \([0-9.]*[0-9]\)\.*$/\1/p')
flock -u 9
echo "glibc $base_glibc"
done_step

# BQFORWARD_IMAGE_PROFILE=release (run alone: the default) builds the binary exactly as the
# Dockerfile's source stage does; dev (scripts/test.sh) packs the dev-profile binary the test
# suite has just built and tested: the same sources without the release optimisations, which
# keeps a fresh machine's suite from compiling the tree a second time with fat LTO.
profile=${BQFORWARD_IMAGE_PROFILE:-release}
step "$profile binary (the Dockerfile's command)"
build_cmd=$(grep -v '^#' Dockerfile | grep -o 'cargo build --release --locked[^\\&]*' | head -n 1 | sed 's/ *$//')
if [ "$profile" = dev ]; then
  build_cmd=${build_cmd/ --release/}
fi
rust_tag=$(sed -n 's/^FROM rust:\([0-9.]*\)-.* AS source$/\1/p' Dockerfile)
rustc_version=$(rustc -V | cut -d' ' -f2)
case "$rustc_version" in
  "$rust_tag" | "$rust_tag".*) echo "rustc $rustc_version, as the Dockerfile's rust:$rust_tag" ;;
  *)
    echo "rustc $rustc_version here, rust:$rust_tag in the Dockerfile: the image would not hold what users build"
    exit 1
    ;;
esac
scripts/build-deps.sh
echo "$build_cmd"
read -ra build_args <<<"$build_cmd"
"${build_args[@]}"
binary=target/release/bqforward
[ "$profile" = dev ] && binary=target/debug/bqforward
needs_glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*[0-9]' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
libs=$(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
echo "$binary: $(du -h "$binary" | cut -f1), links ${libs}needs glibc $needs_glibc, the base has $base_glibc"
if [ "$(printf '%s\n' "$needs_glibc" "$base_glibc" | sort -V | tail -n 1)" != "$base_glibc" ]; then
  echo "the binary needs a newer glibc than the runtime base: build it on an older system"
  exit 1
fi
done_step

step "image $IMAGE (BQFORWARD_BUILD=prebuilt)"
# target/image/ is the prebuilt stage's /out: what the source stage makes in the image.
rm -rf target/image
mkdir -p target/image/usr/local/bin target/image/var/lib/bqforward/buffer target/image/var/lib/bqforward/dead-letters
cp "$binary" target/image/usr/local/bin/bqforward
flock 9
old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
dangling() { podman images --filter dangling=true --format '{{.ID}}' | sort; }
dangling >"$WORK/dangling.before"
# --format docker keeps HEALTHCHECK (OCI's image format has none).
podman build --pull=never --format docker --build-arg BQFORWARD_BUILD=prebuilt -t "$IMAGE" . \
  >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; exit 1; }
new=$(podman image inspect --format '{{.Id}}' "$IMAGE")
# Keep one image per checkout: remove the previous one (with its layers) and the stage images
# this build left behind (the prebuilt stage's).
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  podman rmi "$old" >/dev/null 2>&1 || true
fi
comm -13 "$WORK/dangling.before" <(dangling) | xargs -r podman rmi >/dev/null 2>&1 || true
flock -u 9
podman image inspect --format '{{.Size}} bytes, user {{.User}}, health {{json .HealthCheck.Test}}' "$IMAGE"
done_step

step "run the image (deploy/checks/check_image.py)"
emulator=target/debug/bigquery-emulator
if [ ! -x "$emulator" ]; then
  cargo build --locked -p bigquery-emulator
fi
if [ ! -x .venv/bin/python ]; then
  echo "no .venv: scripts/test.sh makes it (the clients need msgpack and fluent-logger)"
  exit 1
fi
.venv/bin/python deploy/checks/check_image.py --image "$IMAGE" --base "$RUNTIME_BASE" --emulator "$emulator"
done_step

echo
echo "check-image: all passed ($((SECONDS - started))s)"
