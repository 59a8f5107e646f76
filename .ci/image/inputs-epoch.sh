#!/usr/bin/env bash
# Prints SOURCE_DATE_EPOCH for the enclave image: the time of the last commit that changed
# something the image is built from, so that a commit touching only documentation, tests or
# tools leaves every mtime in the image, and so PCR0, as it was.
#
#   .ci/image/inputs-epoch.sh [REPO]
#
# The inputs are the Dockerfile, .dockerignore and enclaver.yaml, and the files .dockerignore
# lets into the build context (its "!" lines: one source for both, so a file added to the image
# is an input here at once). Patterns are taken as git globs, where "*" stays inside one folder,
# as it does in .dockerignore. Needs the commits that touched those files (a shallow clone of
# depth 1 gives the last commit's time instead, which is still reproducible but moves PCR0 on
# every commit).
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
specs=(Dockerfile .dockerignore enclaver.yaml)
while IFS= read -r line; do
  case $line in
    '!'*) specs+=(":(glob)${line#!}") ;;
  esac
done <"$repo/.dockerignore"
epoch=$(git -C "$repo" log -1 --format=%ct -- "${specs[@]}")
if [ -z "$epoch" ]; then
  echo "inputs-epoch.sh: no commit touches the image's inputs in $repo (not a git clone?)" >&2
  exit 1
fi
echo "$epoch"
