#!/usr/bin/env bash
# Builds QEMU (Debian bookworm-backports' 10.0 source) with its `nitro-enclave` machine, which
# reads an EIF, computes PCR0/1/2/8 itself (hw/core/eif.c) and extends them into its emulated
# NSM (hw/i386/nitro_enclave.c): the independent measurement of issue 15. Then it starts that
# machine on an EIF and reports how far it gets. Separate from tests/nsm_qemu/run.sh (whose
# QEMU has only the pc machine) and with a cache of its own; nothing here runs in CI yet.
#
#   tests/support/eif_qemu_nitro.sh [EIF]      (as root; installs Debian build packages)
#
# What the machine needs beyond run.sh's build (QEMU 10.0 hw/i386/Kconfig, meson.build):
#   CONFIG_NITRO_ENCLAVE: depends on MICROVM, selects VHOST_USER_VSOCK and VIRTIO_NSM;
#   MICROVM depends on FDT (--enable-fdt, libfdt-dev); hw/core/eif.c needs zlib, libcbor and
#   gnutls (--enable-gnutls, libgnutls28-dev: the signing certificate's fingerprint);
#   VHOST_USER_VSOCK needs --enable-vhost-user. At run time the machine insists on a
#   vhost-user-vsock back end on the chardev named by `vsock=` (QEMU's docs use rust-vmm's
#   vhost-device-vsock, which Debian 12 and its backports do not package).
set -euo pipefail
CACHE=${EIF_QEMU_CACHE:-/var/cache/noflylist-eif-qemu}
SUITE=bookworm-backports
MIRROR=http://deb.debian.org/debian
APT_DIR=$CACHE/apt
started=$(date +%s)
log() { echo "eif_qemu: [$(($(date +%s) - started)) s] $*"; }

suite_apt() {
    local tool=$1
    shift
    "$tool" -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
        -o APT::Sandbox::User=root -qq "$@"
}

if [ ! -x "$CACHE/qemu/bin/qemu-system-x86_64" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends gcc make ninja-build pkgconf python3 \
        python3-venv libglib2.0-dev libcbor-dev zlib1g-dev libfdt-dev libgnutls28-dev \
        seabios xz-utils >/dev/null
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$CACHE/dl"
    printf 'deb %s %s main\ndeb-src %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
        >"$APT_DIR/sources.list"
    suite_apt apt-get update
    tools=$CACHE/tools
    rm -rf "$tools" "$CACHE/src" "$CACHE/build"
    mkdir -p "$tools" "$CACHE/src" "$CACHE/build"
    (cd "$CACHE/dl" && rm -f ./*.deb && suite_apt apt-get download meson python3-pycotap qemu-system-data)
    for deb in "$CACHE"/dl/*.deb; do dpkg-deb -x "$deb" "$tools"; done
    (cd "$CACHE/dl" && rm -f qemu_*.orig.tar.* && suite_apt apt-get source --download-only --tar-only qemu)
    tar -xf "$CACHE"/dl/qemu_*.orig.tar.* -C "$CACHE/src"
    src=$(echo "$CACHE"/src/qemu-*)
    sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' "$src/meson.build"
    printf 'CONFIG_MICROVM=y\nCONFIG_NITRO_ENCLAVE=y\n' \
        >"$src/configs/devices/x86_64-softmmu/eif-test.mak"
    log "configuring and compiling $(basename "$src") with the nitro-enclave machine"
    (
        cd "$CACHE/build"
        export PYTHONPATH=$tools/usr/lib/python3/dist-packages
        "$src/configure" --python=/usr/bin/python3 --target-list=x86_64-softmmu \
            --without-default-features --without-default-devices \
            --with-devices-x86_64=eif-test --enable-libcbor --enable-gnutls --enable-fdt=system \
            --enable-vhost-user --enable-kvm --enable-tcg --disable-download \
            --disable-install-blobs --disable-docs --disable-debug-info >configure.log 2>&1 ||
            { tail -30 configure.log; exit 1; }
        ninja -j"$(nproc)" qemu-system-x86_64 >build.log 2>&1 || { tail -30 build.log; exit 1; }
    )
    mkdir -p "$CACHE/qemu/bin" "$CACHE/qemu/share/qemu"
    cp "$CACHE/build/qemu-system-x86_64" "$CACHE/qemu/bin/"
    cp "$tools"/usr/share/qemu/{linuxboot_dma,kvmvapic}.bin "$tools"/usr/share/qemu/qboot.rom \
        /usr/share/seabios/bios-256k.bin \
        "$CACHE/qemu/share/qemu/" 2>/dev/null || true
    rm -rf "$CACHE/src" "$CACHE/build" "$CACHE"/dl/qemu_*.orig.tar.*
fi
qemu=$CACHE/qemu/bin/qemu-system-x86_64
log "machines: $("$qemu" -machine help | grep -o 'nitro-enclave.*' || echo 'no nitro-enclave')"
if [ $# -ge 1 ]; then
    # QEMU reads and checks the whole EIF (read_eif_file: version, flags, section table, CRC)
    # before it loads the BIOS and realises vhost-user-vsock. A socket that accepts and says
    # nothing lets it get that far; QEMU's words show how far it got. Seen here (QEMU 10.0.2,
    # 2026-12-05, on a 238 MB EIF from `noflylist eif build`): the EIF passes, qboot.rom
    # loads (copied above), and QEMU stops at "Failed to write msg. Wrote -1 instead of 12."
    # then "vhost_backend_init failed: Protocol error": the vhost-user-vsock handshake. The
    # same EIF with one flipped bit stops earlier, at "CRC mismatch". Booting on needs a
    # vhost-user-vsock back end that answers the handshake (GET_FEATURES,
    # GET_PROTOCOL_FEATURES with CONFIG, SET_OWNER, GET_CONFIG = guest CID, the SET_VRING_*
    # messages), then a test init reading PCR0..2 through /dev/nsm.
    work=$(mktemp -d)
    python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
connection, _ = s.accept(); time.sleep(2)' "$work/vsock.sock" &
    sleep 0.5
    log "$1:"
    timeout 60 "$qemu" -L "$CACHE/qemu/share/qemu" -M nitro-enclave,vsock=c -m 1024 \
        -nographic -display none -kernel "$1" -chardev "socket,id=c,path=$work/vsock.sock" \
        2>&1 | head -3 || true
    wait || true
    rm -rf "$work"
fi
