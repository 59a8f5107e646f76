#!/usr/bin/env bash
# Regenerates requirements/runtime.lock and requirements/pip.lock with the sha256 of every
# wheel the image may install. To bump a version, edit its `name==version` line in the lock,
# run this script, review the diff (only the hashes of the bumped package should move), then
# rebuild the image and publish the new PCRs.
#
#   .ci/image/relock.sh
#
# For each pinned package it downloads, with pip's ordinary configuration, the wheel that pip
# would choose for each target (CPython 3.12 and 3.11 on x86_64 and aarch64: wheel-targets.sh),
# and records `pip hash` of each file. cryptography's wheel is abi3 and pycparser's is pure
# Python, so only cffi differs between 3.11 and 3.12.
set -euo pipefail
cd "$(dirname "$0")/../.."
runtime=requirements/runtime.lock
pip_lock=requirements/pip.lock

pins() { sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' "$1"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck source=.ci/image/wheel-targets.sh
. .ci/image/wheel-targets.sh
# shellcheck disable=SC2046
download_for_each_target --dest "$work" $(pins "$runtime")
# shellcheck disable=SC2046
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" $(pins "$pip_lock")

# Prints one requirement with the hashes of every downloaded wheel of that name and version,
# preceded by a comment that names each wheel beside its hash, for the reader.
requirement() {
  local pin=$1 name version wheel hashes=()
  name=${pin%%==*}
  version=${pin#*==}
  for wheel in "$work/$(echo "$name" | tr - _)-$version-"*.whl; do
    hashes+=("$(python3 -m pip hash "$wheel" | sed -n 's/^--hash=//p')")
    printf '#   %s %s\n' "${hashes[-1]#sha256:}" "$(basename "$wheel")"
  done
  printf '%s' "$pin"
  for hash in "${hashes[@]}"; do printf ' \\\n    --hash=%s' "$hash"; done
  printf '\n\n'
}

# A lock is its header (everything up to the first blank line), then its requirements.
relock() {
  sed '/^$/q' "$1"
  for pin in $(pins "$1"); do requirement "$pin"; done | sed '$d'
}
relock "$runtime" >"$work/runtime.lock"
relock "$pip_lock" >"$work/pip.lock"
mv "$work/runtime.lock" "$runtime"
mv "$work/pip.lock" "$pip_lock"
git --no-pager diff --stat -- "$runtime" "$pip_lock" || true
