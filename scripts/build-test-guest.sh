#!/usr/bin/env bash
# Builds hearth's test guest into OUTDIR: a Debian kernel (OUTDIR/vmlinux, or OUTDIR/vmlinuz if
# it cannot be unpacked), a busybox initramfs whose /init is scripts/test-guest-init.sh
# (OUTDIR/initramfs.cpio.gz) and a small qcow2 base image (OUTDIR/base.qcow2).
#
# It installs what it needs with apt-get (qemu-system-x86 matching the installed qemu-utils, and
# genisoimage for the seeds), but the kernel and busybox are only downloaded and unpacked into
# OUTDIR/work, never installed on the host. Re-runs skip every step whose output is newer than
# its inputs; delete OUTDIR/work to pick up a newer kernel. See docs/test-guest.md.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ "$#" -eq 1 ] || usage

here=$(cd "$(dirname "$0")" && pwd)
init_script="$here/test-guest-init.sh"
this_script="$here/$(basename "$0")"
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
work="$outdir/work"
mkdir -p "$work"

# The kernel modules the guest loads, by name; their dependencies are added from modinfo.
guest_modules=(
    virtio_pci virtio_blk virtio_net # the VM's disks and NIC
    isofs vfat nls_cp437 nls_ascii nls_utf8 # a NoCloud seed as ISO 9660 or FAT
    button evdev # the ACPI power button, as the input device busybox acpid reads
)
# The first sector of the base image: the guest prints it, proving it reads the base through
# its overlay.
base_marker="HEARTH-TEST-BASE v1"
base_size=64M

started=$EPOCHREALTIME
# Seconds since an $EPOCHREALTIME, with one decimal.
seconds_since() {
    local us=$((${EPOCHREALTIME/./} - ${1/./}))
    printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}
say() { printf 'build-test-guest: %s\n' "$*"; }
die() { printf 'build-test-guest: error: %s\n' "$*" >&2; exit 1; }

# True when $1 exists and is newer than every other argument.
is_fresh() {
    local out=$1 input
    shift
    [ -e "$out" ] || return 1
    for input in "$@"; do
        [ "$out" -nt "$input" ] || return 1
    done
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_update_once() {
    [ -n "$apt_updated" ] && return
    say "apt-get update"
    $sudo apt-get update -qq
    apt_updated=1
}
apt_install() {
    apt_update_once
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# qemu-system-x86 must come from the same release as the installed qemu-utils: the Debian
# packages of one QEMU version depend on each other's exact version. A qemu-utils from
# backports (version ending in ~bpoNN+N) needs the backports suite.
install_qemu() {
    local utils_version codename
    utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    case "$utils_version" in
        *~bpo*)
            codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
            if ! grep -rqs "^Suites:.*\b$codename-backports\b\|^deb .* $codename-backports " \
                /etc/apt/sources.list /etc/apt/sources.list.d/; then
                say "adding the $codename-backports suite (qemu-utils is $utils_version)"
                printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
                    "Suites: $codename-backports" "Components: main" \
                    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
                    $sudo tee "/etc/apt/sources.list.d/$codename-backports.sources" >/dev/null
                apt_updated=""
            fi
            apt_install -t "$codename-backports" qemu-system-x86
            ;;
        "") apt_install qemu-system-x86 qemu-utils ;;
        *) apt_install qemu-system-x86 ;;
    esac
}

# QEMU's rbd driver (Ceph RBD disks) is in qemu-block-extra, of the same version again.
install_block_extra() {
    local system_version codename
    system_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    case "$system_version" in
        *~bpo*)
            codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
            apt_install -t "$codename-backports" qemu-block-extra
            ;;
        *) apt_install qemu-block-extra ;;
    esac
}

install_host_tools() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || install_qemu
    # qemu-img --help lists rbd whether or not its module is installed: ask dpkg.
    dpkg-query -W -f='${Status}' qemu-block-extra 2>/dev/null | grep -q 'ok installed' ||
        install_block_extra
    command -v qemu-img >/dev/null 2>&1 || apt_install qemu-utils
    command -v genisoimage >/dev/null 2>&1 || command -v xorriso >/dev/null 2>&1 ||
        command -v cloud-localds >/dev/null 2>&1 || apt_install genisoimage
    command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb is missing: this script needs Debian"
    local system_version utils_version
    system_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [ -n "$system_version" ] && [ "$system_version" != "$utils_version" ]; then
        say "warning: qemu-system-x86 $system_version but qemu-utils $utils_version"
    fi
    say "host tools: $(qemu-system-x86_64 --version | head -n 1)"
}

# Downloads a Debian package ($1) into $work and unpacks it into $work/$2, unless that was
# done already: a downloaded package is kept, so re-runs need no network.
fetch_package() {
    local package=$1 dir="$work/$2" deb
    if [ -e "$dir/.unpacked" ]; then
        return
    fi
    deb=$(ls "$work"/"$package"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        apt_update_once
        say "apt-get download $package"
        (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$package" >/dev/null)
        deb=$(ls "$work"/"$package"_*.deb | head -n 1)
    fi
    say "unpacking $(basename "$deb")"
    rm -rf "$dir"
    dpkg-deb -x "$deb" "$dir"
    touch "$dir/.unpacked"
}

# The kernel is the package linux-image-amd64 depends on (the metapackage itself holds no
# kernel); its name is remembered so that re-runs keep the same kernel.
fetch_kernel() {
    local package
    package=$(cat "$work/kernel-package" 2>/dev/null || true)
    if [ -z "$package" ]; then
        apt_update_once
        package=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
        [ -n "$package" ] || die "cannot resolve linux-image-amd64 to a kernel package"
        echo "$package" > "$work/kernel-package"
    fi
    fetch_package "$package" kernel
    kernel_version=$(ls "$work/kernel/lib/modules" | head -n 1)
    vmlinuz="$work/kernel/boot/vmlinuz-$kernel_version"
    [ -f "$vmlinuz" ] || die "no vmlinuz in $package"
}

# Unpacks the ELF kernel from a bzImage like the kernel's scripts/extract-vmlinux: find each
# compression format's magic bytes and try to decompress from there until an ELF comes out.
extract_vmlinux() {
    local image=$1 out=$2 tmp="$2.tmp" magic tool offset
    local formats=(
        '\xfd\x37\x7a\x58\x5a\x00|xz -dc'
        '\x1f\x8b\x08|gzip -dc'
        '\x28\xb5\x2f\xfd|zstd -dcq'
        '\x02\x21\x4c\x18|lz4 -dc'
        '\x5d\x00\x00\x00|xz -dc --format=lzma'
        'BZh|bzip2 -dc'
    )
    for format in "${formats[@]}"; do
        magic=${format%%|*}
        tool=${format#*|}
        command -v "${tool%% *}" >/dev/null 2>&1 || continue
        for offset in $(LC_ALL=C grep -obUaP "$magic" "$image" | cut -d: -f1); do
            # The compressed kernel is followed by more data, so the tool exits non-zero.
            tail -c "+$((offset + 1))" "$image" | $tool > "$tmp" 2>/dev/null || true
            if [ "$(head -c 4 "$tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                mv "$tmp" "$out"
                say "extracted vmlinux (${tool%% *} at offset $offset)"
                return 0
            fi
        done
    done
    rm -f "$tmp"
    return 1
}

build_kernel() {
    if is_fresh "$outdir/vmlinux" "$vmlinuz"; then
        say "vmlinux is up to date"
        kernel_image="$outdir/vmlinux"
        return
    fi
    say "extracting vmlinux from $(basename "$vmlinuz")"
    if extract_vmlinux "$vmlinuz" "$outdir/vmlinux"; then
        rm -f "$outdir/vmlinuz"
        kernel_image="$outdir/vmlinux"
    else
        # A compressed kernel boots too, but decompressing it under TCG costs about 4.5 s.
        say "warning: cannot unpack $vmlinuz; using it as OUTDIR/vmlinuz"
        cp "$vmlinuz" "$outdir/vmlinuz"
        kernel_image="$outdir/vmlinuz"
    fi
}

# Collects the guest modules and their dependencies in load order (module_order). Debian
# ships no modules.dep (depmod makes it at install time, and kmod may not be on the host), so
# the depends= field of each module's own .modinfo section says what it needs.
declare -A module_path=()
declare -A module_seen=()
module_order=()
index_modules() {
    local file name
    while IFS= read -r file; do
        name=${file##*/}
        name=${name%%.ko*}
        module_path[${name//-/_}]=$file
    done < <(find "$work/kernel/lib/modules/$kernel_version/kernel" -name '*.ko*')
}
module_bytes() {
    case "$1" in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dcq "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}
add_module() {
    local name=${1//-/_} file dependency dependencies
    [ -n "${module_seen[$name]:-}" ] && return
    module_seen[$name]=1
    file=${module_path[$name]:-}
    [ -n "$file" ] || die "module $name is not in kernel $kernel_version (built in?)"
    dependencies=$(module_bytes "$file" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1)
    for dependency in ${dependencies//,/ }; do
        add_module "$dependency"
    done
    module_order+=("$name")
}

build_initramfs() {
    local busybox="$work/busybox/bin/busybox" root="$work/initramfs" name
    local inputs=("$busybox" "$init_script" "$this_script" "$work/kernel/.unpacked")
    if is_fresh "$outdir/initramfs.cpio.gz" "${inputs[@]}"; then
        say "initramfs.cpio.gz is up to date"
        return
    fi
    say "building initramfs.cpio.gz"
    index_modules
    for name in "${guest_modules[@]}"; do
        add_module "$name"
    done
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,etc,lib/modules,proc,sys,mnt,root,tmp}
    cp "$busybox" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    install -m 0755 "$init_script" "$root/init"
    for name in "${module_order[@]}"; do
        module_bytes "${module_path[$name]}" > "$root/lib/modules/$name.ko"
    done
    printf '%s\n' "${module_order[@]}" > "$root/etc/modules.order"
    say "modules: ${module_order[*]}"
    # The kernel opens /dev/console for /init before /init mounts devtmpfs; Debian's kernel has
    # it in its built-in initramfs too, so failing to make it (not root) is harmless.
    mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true
    (
        cd "$root"
        find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null
    ) | gzip -9 > "$outdir/initramfs.cpio.gz.tmp"
    mv "$outdir/initramfs.cpio.gz.tmp" "$outdir/initramfs.cpio.gz"
    say "initramfs.cpio.gz: $(du -k "$outdir/initramfs.cpio.gz" | cut -f1) KiB"
}

# The base image has no inputs; it is made once, so that overlays made on it stay valid.
build_base_image() {
    if [ -f "$outdir/base.qcow2" ]; then
        say "base.qcow2 is up to date"
        return
    fi
    say "creating base.qcow2 ($base_size, first sector \"$base_marker\")"
    local raw="$work/base.raw"
    rm -f "$raw"
    truncate -s "$base_size" "$raw"
    printf '%s\n' "$base_marker" | dd of="$raw" conv=notrunc status=none
    qemu-img convert -f raw -O qcow2 "$raw" "$outdir/base.qcow2.tmp"
    rm -f "$raw"
    mv "$outdir/base.qcow2.tmp" "$outdir/base.qcow2"
}

install_host_tools
fetch_kernel
fetch_package busybox-static busybox
build_kernel
build_initramfs
build_base_image
say "done in $(seconds_since "$started") s:" \
    "$kernel_image ($kernel_version), $outdir/initramfs.cpio.gz, $outdir/base.qcow2"
