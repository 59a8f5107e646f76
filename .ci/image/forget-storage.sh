#!/usr/bin/env bash
# Removes a private buildah storage folder. The overlay driver mounts the folder's overlay/
# directory onto itself, so it must be unmounted first, or rm fails with "Device or resource busy".
#
#   .ci/image/forget-storage.sh DIR
set -euo pipefail
dir=${1:?usage: forget-storage.sh DIR}
[ -e "$dir" ] || exit 0
while read -r mountpoint; do
  umount "$mountpoint"
done < <(awk -v prefix="$(cd "$dir" && pwd)/" 'index($2, prefix) == 1 { print $2 }' /proc/self/mounts | sort -r)
rm -rf "$dir"
