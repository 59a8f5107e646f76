# The enclave image of noflylist: the Python base, the locked runtime wheels and our two
# packages, and nothing else: no list, no simulator, no tests.
#
# It must be bit-for-bit reproducible. The KMS key policy pins PCR0, a hash of the whole enclave
# image built from this one; if two builds of a commit differed by a byte, the policy would break
# and nobody could check that the enclave runs the code we publish. Hence: a base pinned by
# digest, wheels pinned by hash and installed offline, no bytecode, normalised permissions, and
# a final stage with one COPY and no RUN. .ci/image/build-twice.sh proves it in CI;
# docs/deploy.md says how to build (buildah or Docker BuildKit) and how to re-check a build.
#
# Context: this checkout (filtered by the whitelist in .dockerignore) plus wheels/, filled by
# .ci/image/fetch-wheels.sh. The build itself needs no network.
#
#   .ci/image/fetch-wheels.sh
#   buildah build --isolation chroot --pull=never --timestamp "$SOURCE_DATE_EPOCH" \
#     --omit-history --no-hosts --dns=none \
#     --build-arg NOFLYLIST_ENVELOPE=s3://BUCKET/envelope.json \
#     --build-arg NOFLYLIST_KEY_ID=arn:aws:kms:REGION:ACCOUNT:key/KEY-ID -t noflylist:enclave .

# The official Python image, pinned by the digest of its multi-arch index, so that every builder
# on x86_64 and aarch64 starts from the same bytes. To bump it, re-resolve the tag and replace
# the digest (then rebuild, and publish the new PCRs):
#   skopeo inspect --raw docker://docker.io/library/python:3.12-slim | sha256sum
# (or the "Digest:" line of `docker buildx imagetools inspect python:3.12-slim`).
# CI passes a locally made Debian base instead (.ci/image/make-base.sh).
ARG BASE=docker.io/library/python:3.12-slim@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea

FROM ${BASE} AS build

# The envelope's location and the KMS key it must be sealed under are fixed at build time, so
# they are part of PCR0 and nobody outside the enclave can change them. The list itself is not
# in the image: a new list is a new envelope at the same place, and PCR0 stays. The key pin
# matters as much as the location: whoever can replace the envelope (the bucket's writers)
# could otherwise seal a list of their own (an empty one clears everybody) under a key of
# their own; with the pin, KMS refuses to open a data key of any other key.
ARG NOFLYLIST_ENVELOPE
ARG NOFLYLIST_KEY_ID
RUN case "$NOFLYLIST_ENVELOPE" in \
      s3://?*/?*|https://?*) ;; \
      *) echo "Dockerfile: set --build-arg NOFLYLIST_ENVELOPE=s3://BUCKET/KEY (or https://URL);" \
              "the image carries no list, only where to fetch it" >&2; exit 1 ;; \
    esac; \
    case "$NOFLYLIST_KEY_ID" in \
      arn:aws*:kms:*:*:key/?*) ;; \
      *) echo "Dockerfile: set --build-arg NOFLYLIST_KEY_ID=arn:aws:kms:REGION:ACCOUNT:key/ID;" \
              "a key ARN, not an alias: an alias can be pointed at another key" >&2; exit 1 ;; \
    esac

# Nothing in the build writes bytecode: .pyc files embed source mtimes, which differ per checkout.
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/ requirements/
COPY wheels/ wheels/

# pip itself comes from the hash-pinned wheel in requirements/pip.lock, run in place, after its
# sha256 is checked. It installs the locked wheels by name (--find-links), not by path: a path
# would be recorded in direct_url.json. --require-hashes refuses any file the lock does not name;
# --no-deps because the lock lists every dependency; --no-compile writes no bytecode.
RUN set -eu; \
    pip_wheel="wheels/pip-$(sed -n 's/^pip==\([^ ]*\).*/\1/p' requirements/pip.lock)-py3-none-any.whl"; \
    sed -n 's/.*--hash=sha256:\([0-9a-f]\{64\}\).*/\1/p' requirements/pip.lock \
      | sed "s|\$|  $pip_wheel|" | sha256sum --check --strict --quiet -; \
    python3 "$pip_wheel/pip" install --isolated --no-cache-dir --disable-pip-version-check \
      --root-user-action=ignore --no-index --find-links wheels --only-binary=:all: \
      --require-hashes --no-deps --no-compile --target /out/opt/noflylist \
      -r requirements/runtime.lock

COPY enclave/ /out/opt/noflylist/enclave/
COPY noflylist/ /out/opt/noflylist/noflylist/

# The simulator (a fake NSM and KMS), the client library and the operator tools must never
# reach an enclave (the image holds what `serve` runs, nothing more); .dockerignore leaves them
# out, and this refuses a builder that did not honour that. The launcher runs the package with -P, so
# the working directory is not on the import path. Permissions are normalised because the
# checkout's umask decides them; ownership is already root's (COPY and pip run as root).
RUN set -eu; \
    for outside in noflylist_simulator enclave/simulator noflylist/client noflylist/tools; do \
      if [ -e "/out/opt/noflylist/$outside" ]; then \
        echo "Dockerfile: $outside reached the build; check .dockerignore" >&2; exit 1; \
      fi; \
    done; \
    mkdir -p /out/usr/local/bin; \
    printf '#!/bin/sh\nexec python3 -P -m noflylist "$@"\n' >/out/usr/local/bin/noflylist; \
    chmod 755 /out/usr/local/bin/noflylist; \
    chmod -R u=rwX,go=rX /out

# The final stage is the base plus one layer. No RUN here: a RUN leaves empty /etc/hosts,
# /etc/hostname and /etc/resolv.conf behind in the image.
FROM ${BASE}
ARG NOFLYLIST_ENVELOPE
ARG NOFLYLIST_KEY_ID
COPY --from=build /out/ /
ENV PYTHONPATH=/opt/noflylist \
    PYTHONDONTWRITEBYTECODE=1 \
    NOFLYLIST_ENVELOPE=${NOFLYLIST_ENVELOPE} \
    NOFLYLIST_KEY_ID=${NOFLYLIST_KEY_ID}
# No USER: odyn, Enclaver's supervisor, decides whom the service runs as (root in Enclaver's
# releases, uid/gid 1000 on its main branch). Either works, and nothing here needs root: AWS's
# nsm driver makes /dev/nsm mode 0666, and port 8001 is not privileged. odyn forwards each
# ingress connection to 127.0.0.1:<listen_port>, so the service listens there only. CMD is emptied because Enclaver appends it to ENTRYPOINT (the base's CMD is python3).
ENTRYPOINT ["/usr/local/bin/noflylist", "serve", "--attestation", "nsm", "--host", "127.0.0.1", "--port", "8001"]
CMD []
