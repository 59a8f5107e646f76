#!/usr/bin/env bash
# Makes CI's registry-free stand-in for python:3.12-slim: Debian 12 minbase with python3, as a
# one-layer OCI image layout whose manifest digest is a function of the Debian mirror's state.
#
#   .ci/image/make-base.sh            prints the layout's directory and digest:  DIR sha256:...
#
# Why: CI reaches Debian and PyPI but no container registry, yet the build must say
# `FROM localhost/noflylist-base@sha256:...` exactly as production says `FROM python@sha256:...`.
# mmdebstrap with SOURCE_DATE_EPOCH gives a bit-identical root file system for a given mirror
# state once the host's /etc/hostname and /etc/resolv.conf, which it copies in, are removed;
# oci_layout.py wraps that tar with a fixed digest; build-twice.sh imports it with skopeo.
#
# The layout is cached under $NOFLYLIST_IMAGE_CACHE (default /var/cache/noflylist-image), keyed
# by this script and the writer, so a warm run skips mmdebstrap (about 100 s cold). Delete the
# cache to pick up a newer mirror state.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${NOFLYLIST_IMAGE_CACHE:-/var/cache/noflylist-image}

suite=bookworm
mirror=http://deb.debian.org/debian
# Any fixed time works; this one is Debian 12's release day (2023-06-10).
base_epoch=1686355200
arch=$(dpkg --print-architecture)   # amd64 or arm64: the OCI names of Debian's two ports we use

key=$(cat "$here/make-base.sh" "$here/oci_layout.py" | sha256sum | cut -c1-16)
layout="$cache/base-$arch-$key"
if [ -s "$layout/digest" ]; then
  echo "$layout $(cat "$layout/digest")"
  exit 0
fi

for tool in mmdebstrap python3; do
  command -v "$tool" >/dev/null || { echo "make-base: $tool is missing (apt-get install mmdebstrap)" >&2; exit 1; }
done
mkdir -p "$cache"
work=$(mktemp -d "$cache/make-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --skip=output/dev: no device nodes in the tar (a container runtime provides /dev).
# The customize hook runs inside the new root before it is packed. The new root lives in
# memory (TMPDIR=/dev/shm) where dpkg's many fsync calls cost nothing; on disk they take most
# of the time. (dpkg's force-unsafe-io would leave its setting in the image.)
tmp=/dev/shm
[ -d "$tmp" ] && [ -w "$tmp" ] || tmp=${TMPDIR:-/tmp}
# shellcheck disable=SC2016  # $1 belongs to the hook's shell: the new root's path
TMPDIR=$tmp SOURCE_DATE_EPOCH=$base_epoch mmdebstrap --quiet --variant=minbase --include=python3 \
  --architectures="$arch" --skip=output/dev \
  --customize-hook='rm -f "$1/etc/hostname" "$1/etc/resolv.conf"' \
  "$suite" "$work/rootfs.tar" "$mirror" >&2

digest=$(python3 "$here/oci_layout.py" "$work/rootfs.tar" "$work/layout" \
  --epoch "$base_epoch" --arch "$arch" --name noflylist-base)
echo "$digest" >"$work/layout/digest"
rm -rf "$layout"
mv "$work/layout" "$layout"
echo "$layout $digest"
