#!/usr/bin/env bash
# CI stage for the enclave image: two builds must be identical (with a negative control), the
# image must hold only what it should, and it must run. Needs root, and buildah, skopeo and
# mmdebstrap from Debian (.ci/apt-packages lists them).
#
#   .ci/image/check.sh
#
# Costs about 1 minute warm (cached base and wheels) and 2 to 3 minutes cold (mmdebstrap and
# pip downloads). Everything it builds lives in one folder in memory, removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
for tool in buildah skopeo mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "image check: $tool is missing: apt-get install buildah skopeo mmdebstrap" >&2
    exit 1
  fi
done
parent=/dev/shm
[ -d "$parent" ] && [ -w "$parent" ] || parent=${TMPDIR:-/tmp}
work=$(mktemp -d "$parent/noflylist-image.XXXXXX")
cleanup() {
  "$here/forget-storage.sh" "$work/a" || true
  "$here/forget-storage.sh" "$work/b" || true
  rm -rf "$work"
}
trap cleanup EXIT

"$here/build-twice.sh" "$work"
"$here/smoke.sh" "$work"
echo "== image: check finished in $(( $(date +%s) - start )) s"
