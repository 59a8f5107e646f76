#!/usr/bin/env bash
# Proves that the enclave image is reproducible: builds it twice, into two empty storages, from
# two fresh copies of the build context that differ in everything a checkout may differ in
# (file mtimes, umask, path), and requires identical image IDs and layer digests. On a
# difference it prints which config fields and which files differ. A negative control then
# builds naively (no --timestamp, no permission normalisation) and requires the comparison to
# catch it, so a comparison that sees nothing cannot pass for a proof.
#
#   .ci/image/build-twice.sh WORK_DIR
#
# Leaves the first build in WORK_DIR/a (buildah storage, tag localhost/noflylist:check) and its
# OCI export in WORK_DIR/export-a, for smoke.sh. Needs root, buildah, skopeo, mmdebstrap.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/.ci/image
work=${1:?usage: build-twice.sh WORK_DIR}
mkdir -p "$work"
work=$(cd "$work" && pwd)
driver=${NOFLYLIST_STORAGE_DRIVER:-overlay}
# The time of the last commit that changed the image's inputs (inputs-epoch.sh): any fixed
# value works, this one needs no agreement beyond the commit and leaves PCR0 alone when a
# commit changes only what the image does not hold.
epoch=${SOURCE_DATE_EPOCH:-$("$here/inputs-epoch.sh" "$repo")}
# Build arguments as a deployment would give them (a placeholder bucket and key).
envelope=${NOFLYLIST_TEST_ENVELOPE:-s3://noflylist-example-lists/envelope.json}
key_id=${NOFLYLIST_TEST_KEY_ID:-arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000}

phase_start=$(date +%s)
phase() {
  local now
  now=$(date +%s)
  echo "== image: $1 ($(( now - phase_start )) s since the previous step)"
  phase_start=$now
}

storage() { echo "containers-storage:[$driver@$work/$1/root+$work/$1/run]"; }
buildah_in() {
  local side=$1
  shift
  buildah --root "$work/$side/root" --runroot "$work/$side/run" --storage-driver "$driver" "$@"
}

# 1. Inputs: the base (from Debian, digest-pinned) and the locked wheels.
base=$("$here/make-base.sh")   # "DIR sha256:..."; a failure stops the script here
read -r base_layout base_digest <<<"$base"
wheels=${NOFLYLIST_IMAGE_CACHE:-/var/cache/noflylist-image}/wheels
"$here/fetch-wheels.sh" "$wheels"
phase "base $base_digest and wheels ready"

# 2. Two fresh copies of the context: tracked and untracked files of the checkout, the wheels,
# and decoys that .dockerignore must keep out of the image (bytecode, an envelope, a list).
make_context() {
  local dest=$1 mask=$2
  rm -rf "$dest"
  mkdir -p "$dest"
  (
    umask "$mask"
    cd "$repo"
    git ls-files -co --exclude-standard -z | while IFS= read -r -d '' file; do
      [ -f "$file" ] && printf '%s\0' "$file"
    done | xargs -0 cp --parents -t "$dest" --
    mkdir -p "$dest/wheels" "$dest/noflylist/__pycache__"
    cp "$wheels"/*.whl "$dest/wheels/"
    echo decoy >"$dest/noflylist/__pycache__/cli.cpython-312.pyc"
    echo '{"format": "noflylist-envelope-v2"}' >"$dest/noflylist/envelope.json"
    echo '{"format": "noflylist-envelope-v2"}' >"$dest/envelope.json"
    printf 'DOE JOHN\n' >"$dest/list.txt"
  )
}
make_context "$work/context-a" 022
make_context "$work/context-b" 077
# Copy b's files get a different time (copy a's are "now"), as an old checkout would have.
find "$work/context-b" -exec touch -h -d '2001-02-03 04:05:06' {} +
phase "two contexts copied (umask 022 and 077, different mtimes and paths)"

# 3. Two empty storages, each given the base by skopeo, keeping its digest.
for side in a b; do
  "$here/forget-storage.sh" "$work/$side"
  skopeo copy --quiet --preserve-digests "oci:$base_layout:noflylist-base" \
    "$(storage "$side")localhost/noflylist-base:latest"
done

reproducible_flags=(--timestamp "$epoch")
build() {
  local side=$1 context=$2 tag=$3
  shift 3
  buildah_in "$side" build --quiet --isolation chroot --pull=never \
    --omit-history --no-hosts --dns=none --format oci \
    --build-arg "BASE=localhost/noflylist-base@$base_digest" \
    --build-arg "NOFLYLIST_ENVELOPE=$envelope" --build-arg "NOFLYLIST_KEY_ID=$key_id" \
    -t "$tag" "$@" "$context" >/dev/null
}
export_image() {
  local side=$1 tag=$2 dest=$3
  rm -rf "$dest"
  skopeo copy --quiet --preserve-digests --dest-oci-accept-uncompressed-layers \
    "$(storage "$side")$tag" "oci:$dest:noflylist"
}

build a "$work/context-a" localhost/noflylist:check "${reproducible_flags[@]}"
phase "first build"
build b "$work/context-b" localhost/noflylist:check "${reproducible_flags[@]}"
phase "second build"
export_image a localhost/noflylist:check "$work/export-a"
export_image b localhost/noflylist:check "$work/export-b"

# 4. The comparison, then what the image holds.
if ! python3 "$here/inspect_image.py" compare "$work/export-a" "$work/export-b"; then
  echo "== image: NOT REPRODUCIBLE: the differences above name what to pin or normalise" >&2
  exit 1
fi
python3 "$here/inspect_image.py" audit "$work/export-a"
phase "compared and audited"

# 5. Negative control: the same Dockerfile without its permission normalisation, built without
# --timestamp, from context b (umask 077, old mtimes). The comparison must report it.
sed 's|chmod -R u=rwX,go=rX /out|true|' "$work/context-b/Dockerfile" >"$work/Dockerfile.naive"
if cmp -s "$work/context-b/Dockerfile" "$work/Dockerfile.naive"; then
  echo "== image: the negative control could not remove the chmod line from the Dockerfile" >&2
  exit 1
fi
build b "$work/context-b" localhost/noflylist:naive -f "$work/Dockerfile.naive"
export_image b localhost/noflylist:naive "$work/export-naive"
if python3 "$here/inspect_image.py" compare "$work/export-a" "$work/export-naive" \
  >"$work/naive.txt"; then
  echo "== image: the negative control was NOT caught: the comparison sees no difference" >&2
  exit 1
fi
for expected in "config created" "mode differs in" "0o100644 != 0o100600"; do
  if ! grep -q "$expected" "$work/naive.txt"; then
    echo "== image: the negative control's report lacks \"$expected\":" >&2
    cat "$work/naive.txt" >&2
    exit 1
  fi
done
echo "negative control caught; the first lines of its report:"
sed -n '/the two builds differ/,$p' "$work/naive.txt" | head -8
phase "negative control"

size=$(python3 -c 'import json, sys
index = json.load(open(sys.argv[1] + "/index.json"))
digest = index["manifests"][0]["digest"].split(":")[1]
manifest = json.load(open(sys.argv[1] + "/blobs/sha256/" + digest))
sizes = [layer["size"] for layer in manifest["layers"]]
print(f"{sum(sizes) / 1e6:.1f} MB uncompressed, of which the application layer {sizes[-1] / 1e6:.1f} MB")' "$work/export-a")
echo "== image: reproducible; image ID $(buildah_in a images --no-trunc --format '{{.ID}}' localhost/noflylist:check), $size"
