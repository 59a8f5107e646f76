#!/usr/bin/env bash
# Smoke test of the image that build-twice.sh left in WORK_DIR/a: `noflylist --version`, the
# service's imports, no simulator, and the service serving a list from the local KMS (and
# refusing it under the image's own key pin). The details are in smoke.py.
#
#   .ci/image/smoke.sh WORK_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(cd "${1:?usage: smoke.sh WORK_DIR}" && pwd)
exec python3 "$here/smoke.py" --root "$work/a/root" --runroot "$work/a/run" \
  --driver "${NOFLYLIST_STORAGE_DRIVER:-overlay}" --image localhost/noflylist:check
