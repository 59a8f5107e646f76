#!/usr/bin/env bash
# Runs enclave/nsm.py against the real Linux nsm driver and QEMU's virtio-nsm-pci device in a
# QEMU guest (software emulation, TCG) and exits with the guest tests' result. README.md beside
# this file explains the pieces. Run as root (it installs Debian packages): tests/nsm_qemu/run.sh
#
# Environment (all optional):
#   NSM_QEMU_CACHE    where QEMU, kernel and downloads are kept between runs, outside the clone
#                     (default /var/cache/noflylist-nsm-qemu); delete it to start cold
#   NSM_QEMU_TIMEOUT  seconds the guest may run before it is stopped (default 300)
#   NSM_QEMU_KEEP     if set, keep the work folder (initramfs, console log) and print its path
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${NSM_QEMU_CACHE:-/var/cache/noflylist-nsm-qemu}
# The interpreter whose packages (pytest, cbor2, cryptography) the guest gets: the one ./test makes.
HOST_PYTHON=$ROOT/.venv/bin/python
# The guest boots and runs the tests in under a minute, 2 on a busy machine; 5 means a hang.
TIMEOUT=${NSM_QEMU_TIMEOUT:-300}
# Debian suite with QEMU >= 9.2 (virtio-nsm-pci) sources, meson >= 1.5 and a kernel >= 6.8 (nsm).
SUITE=bookworm-backports
MIRROR=http://deb.debian.org/debian
# Guest RAM: the uncompressed initramfs (about 80 MB) plus Python and the tests.
GUEST_MEM_MB=1024

QEMU_DIR=$CACHE/qemu          # bin/qemu-system-x86_64 and share/qemu (firmware)
KERNEL_DIR=$CACHE/kernel      # vmlinuz and nsm.ko
APT_DIR=$CACHE/apt            # an apt state of its own for $SUITE: the system's is left alone

started_at=$(date +%s)
log() { echo "nsm_qemu: [$(($(date +%s) - started_at)) s] $*"; }
die() { echo "nsm_qemu: FAILED: $*" >&2; exit 1; }

# -- host packages ---------------------------------------------------------------------------

apt_updated=""
ensure_packages() {
    local missing="" p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    log "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# apt-get/apt-cache on $SUITE only, with lists and downloads under $APT_DIR.
suite_apt() {
    local tool=$1
    shift
    "$tool" -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
        -o APT::Sandbox::User=root -qq "$@"
}

suite_apt_ready=""
prepare_suite_apt() {
    [ -n "$suite_apt_ready" ] && return 0
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$CACHE/dl"
    printf 'deb %s %s main\ndeb-src %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
        >"$APT_DIR/sources.list"
    log "reading the $SUITE package lists"
    suite_apt apt-get update
    suite_apt_ready=1
}

# -- QEMU with virtio-nsm-pci, built once ----------------------------------------------------

build_qemu() {
    log "building QEMU from Debian's $SUITE source (once; about 5 minutes on 2 cores)"
    ensure_packages gcc make ninja-build pkgconf python3 python3-venv libglib2.0-dev \
        libcbor-dev zlib1g-dev seabios xz-utils
    prepare_suite_apt
    local dl=$CACHE/dl tools=$CACHE/tools src build
    rm -rf "$tools" "$CACHE/src" "$CACHE/build" "$QEMU_DIR.partial"
    mkdir -p "$tools" "$CACHE/src" "$CACHE/build"
    # Debian's bookworm meson is too old for QEMU 10 and pycotap is not in bookworm: take both
    # from $SUITE, unpacked beside the build (pure Python) instead of installed.
    # Its option ROMs (direct kernel boot, vapic) come built from the same source in Debian's
    # qemu-system-data: building them here would need 32-bit libgcc.
    rm -f "$dl"/*.deb
    (cd "$dl" && suite_apt apt-get download meson python3-pycotap qemu-system-data)
    for deb in "$dl"/meson_*.deb "$dl"/python3-pycotap_*.deb "$dl"/qemu-system-data_*.deb; do
        dpkg-deb -x "$deb" "$tools"
    done
    # Only the upstream tarball: nothing of Debian's packaging is needed for this build.
    rm -f "$dl"/qemu_*.orig.tar.*
    (cd "$dl" && suite_apt apt-get source --download-only --tar-only qemu)
    tar -xf "$dl"/qemu_*.orig.tar.* -C "$CACHE/src"
    src=$(echo "$CACHE"/src/qemu-*)
    build=$CACHE/build
    # Debian's +ds tarball drops the prebuilt firmware (seabios and qemu-system-data supply
    # what this test needs), but the build would still unpack the edk2 images: skip them.
    sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' "$src/meson.build"
    # The pc machine plus the two devices this test needs; nothing else.
    printf 'CONFIG_I440FX=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NSM=y\n' \
        >"$src/configs/devices/x86_64-softmmu/nsm-test.mak"
    (
        cd "$build"
        export PYTHONPATH=$tools/usr/lib/python3/dist-packages
        log "configuring $(basename "$src")"
        "$src/configure" --python=/usr/bin/python3 --target-list=x86_64-softmmu \
            --without-default-features --without-default-devices \
            --with-devices-x86_64=nsm-test --enable-libcbor --enable-tcg --disable-fdt \
            --disable-download --disable-install-blobs --disable-docs --disable-debug-info \
            >configure.log 2>&1 || { tail -40 configure.log; exit 1; }
        log "compiling qemu-system-x86_64 with $(nproc) jobs"
        ninja -j"$(nproc)" qemu-system-x86_64 >build.log 2>&1 || { tail -40 build.log; exit 1; }
    ) || die "the QEMU build failed (logs in $build)"
    mkdir -p "$QEMU_DIR.partial/bin" "$QEMU_DIR.partial/share/qemu"
    cp "$build/qemu-system-x86_64" "$QEMU_DIR.partial/bin/"
    cp "$tools"/usr/share/qemu/{linuxboot_dma,kvmvapic}.bin /usr/share/seabios/bios-256k.bin \
        "$QEMU_DIR.partial/share/qemu/"
    "$QEMU_DIR.partial/bin/qemu-system-x86_64" -device help | grep -q '"virtio-nsm-pci"' ||
        die "the QEMU built has no virtio-nsm-pci device"
    basename "$src" >"$QEMU_DIR.partial/VERSION"
    rm -rf "$QEMU_DIR"
    mv "$QEMU_DIR.partial" "$QEMU_DIR"
    rm -rf "$CACHE/src" "$CACHE/build" "$tools" "$dl"/qemu_*.orig.tar.* "$dl"/*.deb
}

# -- kernel and nsm.ko, taken from the kernel package without installing it -----------------

fetch_kernel() {
    log "fetching Debian's $SUITE kernel (vmlinuz and nsm.ko)"
    prepare_suite_apt
    local dl=$CACHE/dl image deb tmp
    image=$(suite_apt apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
    [ -n "$image" ] || die "no linux-image-amd64 in $SUITE"
    rm -f "$dl"/linux-image-*.deb
    (cd "$dl" && suite_apt apt-get download "$image")
    deb=$(echo "$dl"/linux-image-*.deb)
    tmp=$CACHE/kernel.partial
    rm -rf "$tmp"
    mkdir -p "$tmp/x"
    dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$tmp/x" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/misc/nsm.ko*'
    cp "$tmp"/x/boot/vmlinuz-* "$tmp/vmlinuz"
    local module
    module=$(echo "$tmp"/x/lib/modules/*/kernel/drivers/misc/nsm.ko*)
    case $module in
        *.xz) xz -dc "$module" >"$tmp/nsm.ko" ;;
        *.zst) zstd -qdc "$module" >"$tmp/nsm.ko" ;;
        *) cp "$module" "$tmp/nsm.ko" ;;
    esac
    echo "$image" >"$tmp/VERSION"
    rm -rf "$tmp/x" "$deb" "$KERNEL_DIR"
    mv "$tmp" "$KERNEL_DIR"
}

# -- initramfs: busybox, nsm.ko, Debian's python3 and the files guest_files.txt names -------

# Copy the shared libraries an ELF file needs (as ldd resolves them on this Debian host).
copy_libraries() {
    local root=$1 elf=$2 lib
    for lib in $(ldd "$elf" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
    done
}

build_initramfs() {
    local root=$1 out=$2 python stdlib elf
    ensure_packages busybox-static cpio python3.11-minimal libpython3.11-stdlib
    mkdir -p "$root"/{bin,lib,usr/bin,usr/lib,opt/site,project/tests/nsm_qemu,proc,sys,dev,tmp,root}
    cp /bin/busybox "$root/bin/busybox"
    install -m 755 "$HERE/init" "$root/init"
    cp "$KERNEL_DIR/nsm.ko" "$root/lib/nsm.ko"
    # Debian's interpreter; its standard library without what no test imports.
    python=/usr/bin/python3.11
    stdlib=/usr/lib/python3.11
    cp "$python" "$root/usr/bin/python3.11"
    ln -s /usr/bin/python3.11 "$root/bin/python3"
    tar -C / -cf - --exclude='usr/lib/python3.11/test' --exclude='usr/lib/python3.11/config-*' \
        --exclude='usr/lib/python3.11/lib2to3' --exclude='usr/lib/python3.11/idlelib' \
        --exclude='usr/lib/python3.11/tkinter' --exclude='usr/lib/python3.11/ensurepip' \
        --exclude='usr/lib/python3.11/pydoc_data' --exclude='usr/lib/python3.11/distutils' \
        --exclude='usr/lib/python3.11/site-packages' --exclude='usr/lib/python3.11/dist-packages' \
        --exclude='usr/lib/python3.11/sitecustomize.py' "${stdlib#/}" | tar -C "$root" -xf -
    # Test-side packages from the project's .venv (the locked versions ./test installs), whole
    # distributions with their metadata (guest_packages.py says why): their compiled parts
    # need the guest's CPython 3.11; cryptography's wheel has its own OpenSSL.
    [ -x "$HOST_PYTHON" ] || die "$HOST_PYTHON is missing: run ./test first (it makes .venv)"
    "$HOST_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$HOST_PYTHON must be 3.11 like the guest's Debian python3.11"
    log "copying pytest, cbor2, cryptography and what they need from $HOST_PYTHON"
    "$HOST_PYTHON" "$HERE/guest_packages.py" "$root/opt/site" pytest cbor2 cryptography >/dev/null ||
        die "could not copy the guest's Python packages"
    # enclave/, the verifier the guest's documents are checked with (the client side, not the
    # image's) and the tests: the files guest_files.txt names, nothing else of the project.
    local path
    while read -r path; do
        case $path in '' | '#'*) continue ;; esac
        [ -e "$ROOT/$path" ] || die "guest_files.txt names $path, which the checkout lacks"
        mkdir -p "$root/project/$(dirname "$path")"
        cp -r "$ROOT/$path" "$root/project/$path"
    done <"$HERE/guest_files.txt"
    # Byte-compile with the guest's interpreter: compiling at import is slow under TCG.
    find "$root/project" "$root/opt/site" -name __pycache__ -prune -exec rm -rf {} +
    "$python" -m compileall -q -j0 "$root/project" "$root/opt/site" >/dev/null
    # The dynamic loader and every library the ELF files above need.
    while IFS= read -r elf; do
        copy_libraries "$root" "$elf"
    done < <(find "$root/usr/bin" "$root/usr/lib" "$root/opt/site" -type f \
        \( -name 'python3*' -o -name '*.so' -o -name '*.so.*' \))
    (cd "$root" && find . -print | cpio -o -H newc --quiet) >"$out"
}

# -- main ------------------------------------------------------------------------------------

main() {
    [ "$(id -u)" = 0 ] || die "run as root: the script installs Debian packages"
    # shellcheck disable=SC1091
    [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ] ||
        die "written for Debian 12 (bookworm): on another release, change SUITE and python3.11"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9 # one run at a time builds or reads the cache

    ensure_packages libglib2.0-0 libcbor0.8 zlib1g xz-utils
    if [ -x "$QEMU_DIR/bin/qemu-system-x86_64" ]; then
        log "reusing QEMU $(cat "$QEMU_DIR/VERSION") from $QEMU_DIR"
    else
        build_qemu
    fi
    if [ -f "$KERNEL_DIR/vmlinuz" ] && [ -f "$KERNEL_DIR/nsm.ko" ]; then
        log "reusing $(cat "$KERNEL_DIR/VERSION") from $KERNEL_DIR"
    else
        fetch_kernel
    fi

    work=$(mktemp -d "${TMPDIR:-/tmp}/nsm-qemu.XXXXXX")
    if [ -n "${NSM_QEMU_KEEP:-}" ]; then
        log "keeping $work"
    else
        trap 'rm -rf "$work"' EXIT
    fi
    log "building the initramfs"
    build_initramfs "$work/root" "$work/initramfs.cpio"

    # A fresh module id each run: the guest checks the device reports the one QEMU was given.
    module_id="i-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')-nsmqemu"
    log "booting the guest (TCG, at most $TIMEOUT s)"
    set +e
    timeout -k 10 "$TIMEOUT" "$QEMU_DIR/bin/qemu-system-x86_64" \
        -machine pc -accel tcg -m "$GUEST_MEM_MB" -smp 1 \
        -nodefaults -no-user-config -display none -no-reboot -serial stdio \
        -L "$QEMU_DIR/share/qemu" \
        -kernel "$KERNEL_DIR/vmlinuz" -initrd "$work/initramfs.cpio" \
        -append "console=ttyS0 quiet panic=-1 NSM_EXPECTED_MODULE_ID=$module_id" \
        -device "virtio-nsm-pci,module-id=$module_id" </dev/null |
        tr -d '\r' | tee "$work/console.log"
    qemu_status=${PIPESTATUS[0]}
    set -e

    result=$(grep -a -o 'NSM_QEMU_GUEST_EXIT=[0-9]*' "$work/console.log" | tail -1 | cut -d= -f2 ||
        true)
    elapsed=$(($(date +%s) - started_at))
    if [ -z "$result" ]; then
        die "the guest gave no result (QEMU exit status $qemu_status; 124 is the $TIMEOUT s timeout) after $elapsed s"
    fi
    if [ "$result" != 0 ]; then
        die "the guest tests failed (exit $result) after $elapsed s"
    fi
    log "guest NSM tests passed in $elapsed s"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; exit; fi
