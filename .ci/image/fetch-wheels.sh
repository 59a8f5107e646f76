#!/usr/bin/env bash
# Puts every wheel that requirements/*.lock pins into DIR (default: wheels/), checked against
# the locks' hashes. The image build then needs no network: the Dockerfile installs from
# wheels/ with --no-index.
#
#   .ci/image/fetch-wheels.sh [DIR]
#
# A DIR that already holds a file for every locked hash is left alone (CI's warm path).
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-wheels}
locks=(requirements/runtime.lock requirements/pip.lock)
mkdir -p "$dest"

locked_hashes() { sed -n 's/.*--hash=sha256:\([0-9a-f]\{64\}\).*/\1/p' "${locks[@]}" | sort -u; }
present_hashes() { (cd "$dest" && find . -maxdepth 1 -name '*.whl' -exec sha256sum {} +) | cut -c1-64 | sort -u; }
if [ -z "$(comm -23 <(locked_hashes) <(present_hashes))" ]; then
  exit 0
fi

# The same targets as relock.sh (wheel-targets.sh names them). --require-hashes makes pip
# refuse any file whose sha256 the lock does not list.
# shellcheck source=.ci/image/wheel-targets.sh
. .ci/image/wheel-targets.sh
download_for_each_target --require-hashes --dest "$dest" -r requirements/runtime.lock
python3 -m pip download --quiet --require-hashes --no-deps --only-binary=:all: \
  --dest "$dest" -r requirements/pip.lock

missing=$(comm -23 <(locked_hashes) <(present_hashes))
if [ -n "$missing" ]; then
  echo "fetch-wheels: no wheel in $dest has these locked hashes: $missing" >&2
  echo "fetch-wheels: run .ci/image/relock.sh if the locks name wheels pip no longer picks" >&2
  exit 1
fi
