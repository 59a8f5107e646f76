# shellcheck shell=bash
# Sourced by fetch-wheels.sh and relock.sh, so that the wheels fetched for the image are the
# wheels the locks were made from. The targets: CPython 3.12 (the released image,
# python:3.12-slim) and CPython 3.11 (CI's Debian 12 stand-in base), each on x86_64 and aarch64
# (Graviton); tests/test_image_recipe.py checks that the locks cover the same four.

# download_for_each_target PIP_DOWNLOAD_ARGS...: `pip download` of binary wheels, without their
# dependencies, once for each target. The manylinux tags go from newest to oldest: pip takes
# the best wheel a glibc 2.34+ system accepts.
download_for_each_target() {
  local python machine tag platforms
  for python in 3.12 3.11; do
    for machine in x86_64 aarch64; do
      platforms=()
      for tag in manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014; do
        platforms+=(--platform "${tag}_${machine}")
      done
      python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
        --python-version "$python" "${platforms[@]}" "$@"
    done
  done
}
