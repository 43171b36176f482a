#!/usr/bin/env bash
# Boots hearth's test guest once the way hearth will run a member's VM, and powers it off over
# QMP: a manual check of the QEMU command line, not part of the test suite.
#
# It makes a qcow2 overlay on OUTDIR/base.qcow2 and a NoCloud seed ISO (hostname, one SSH key,
# a static IP) in a temporary directory, starts qemu-system-x86_64 with QMP on a unix socket
# and the serial console in a file, waits for the guest's READY marker, shows the drive's IO
# throttling through QMP query-block (and changes it live), sends system_powerdown and waits
# for QEMU to exit, timing each phase. The network backend is user-mode with restrict=on: no
# packet leaves the machine. Build OUTDIR first with scripts/build-test-guest.sh.
set -euo pipefail

usage() {
    cat >&2 <<'EOF'
usage: boot-test-guest.sh OUTDIR [--mac MAC] [--hostname NAME] [--ip CIDR] [--gateway IP]
                          [--iops N] [--accel auto|kvm|tcg] [--append KERNEL_ARGS] [--keep]
EOF
    exit 2
}

[ "$#" -ge 1 ] || usage
outdir=$(cd "$1" && pwd)
shift
mac="52:54:00:12:34:56"
guest_hostname="member-vm-1"
address="192.0.2.10/24"
gateway="192.0.2.1"
iops=100
accel_choice=auto
keep=""
extra_append=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --mac) mac=$2; shift 2 ;;
        --hostname) guest_hostname=$2; shift 2 ;;
        --ip) address=$2; shift 2 ;;
        --gateway) gateway=$2; shift 2 ;;
        --iops) iops=$2; shift 2 ;;
        --accel) accel_choice=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --append) extra_append=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ "$mac" =~ ^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$ ]] || { echo "bad MAC: $mac" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
# The system interpreter starts in 15 ms; a version manager's shim can take 300 ms, which would
# blur the QMP timing.
python=/usr/bin/python3
[ -x "$python" ] || python=python3
qmp() { "$python" "$here/qmp.py" "$@"; }
ready_deadline_s=60
powerdown_deadline_s=30

say() { printf 'boot-test-guest: %s\n' "$*"; }
die() { printf 'boot-test-guest: error: %s\n' "$*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
# Milliseconds between two now_us readings.
ms_between() { echo $((($2 - $1) / 1000)); }

kernel=""
for candidate in vmlinux vmlinuz; do
    [ -f "$outdir/$candidate" ] && { kernel="$outdir/$candidate"; break; }
done
if [ -z "$kernel" ] || [ ! -f "$outdir/initramfs.cpio.gz" ] || [ ! -f "$outdir/base.qcow2" ]; then
    die "$outdir lacks vmlinux, initramfs.cpio.gz or base.qcow2: run scripts/build-test-guest.sh $outdir"
fi
command -v qemu-system-x86_64 >/dev/null || die "no qemu-system-x86_64: run scripts/build-test-guest.sh"

tmp=$(mktemp -d /tmp/hearth-test-guest.XXXXXX)
qemu_pid=""
cleanup() {
    local status=$?
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    if [ -n "$keep" ] || [ "$status" -ne 0 ]; then
        say "kept $tmp (console.log, qemu.log, overlay, seed)"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# The VM's disk: an overlay whose backing file is the shared base image, as hearth will
# create one per VM.
qemu-img create -q -f qcow2 -b "$outdir/base.qcow2" -F qcow2 "$tmp/overlay.qcow2"

# An ed25519 public key in OpenSSH's format around 32 random bytes: the seed only needs a
# well-formed key, and no private half exists anywhere.
ssh_public_key() {
    local blob
    blob=$({ printf '\0\0\0\013ssh-ed25519\0\0\0\040'; head -c 32 /dev/urandom; } | base64 -w 0)
    echo "ssh-ed25519 $blob hearth-test@$guest_hostname"
}

make_seed() {
    local dir="$tmp/seed"
    mkdir -p "$dir"
    cat > "$dir/meta-data" <<EOF
instance-id: iid-$guest_hostname
local-hostname: $guest_hostname
EOF
    cat > "$dir/user-data" <<EOF
#cloud-config
ssh_authorized_keys:
  - $(ssh_public_key)
EOF
    cat > "$dir/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match:
      macaddress: "$mac"
    set-name: eth0
    addresses:
      - $address
    gateway4: $gateway
    nameservers:
      addresses: [192.0.2.53]
EOF
    if command -v genisoimage >/dev/null; then
        genisoimage -quiet -output "$tmp/seed.iso" -volid cidata -joliet -rock \
            "$dir/meta-data" "$dir/user-data" "$dir/network-config"
    elif command -v xorriso >/dev/null; then
        xorriso -as mkisofs -quiet -output "$tmp/seed.iso" -volid cidata -joliet -rock \
            "$dir/meta-data" "$dir/user-data" "$dir/network-config"
    elif command -v cloud-localds >/dev/null; then
        cloud-localds --network-config="$dir/network-config" "$tmp/seed.iso" \
            "$dir/user-data" "$dir/meta-data"
    else
        die "no genisoimage, xorriso or cloud-localds: run scripts/build-test-guest.sh"
    fi
}

# Prints "kvm" or "tcg" and, on stderr, why. kvm_pvm is a nested KVM layer on which QEMU
# aborts setting MSRs, so only a plain /dev/kvm counts; a failing kvm boot still falls back.
detect_accel() {
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        say "accel: tcg (no usable /dev/kvm)" >&2
        echo tcg
    elif [ -d /sys/module/kvm_pvm ]; then
        say "accel: tcg (/dev/kvm is kvm_pvm, which cannot run this guest)" >&2
        echo tcg
    else
        say "accel: kvm" >&2
        echo kvm
    fi
}

qemu_args() {
    local accel=$1
    # shellcheck disable=SC2054 # QEMU's option values are comma-separated on purpose.
    local args=(
        -name "guest=$guest_hostname"
        -machine "q35,accel=$accel"
        -cpu max -smp 1 -m 256M
        -nodefaults -no-user-config -display none -no-reboot
        -kernel "$kernel" -initrd "$outdir/initramfs.cpio.gz"
        -append "console=ttyS0 quiet panic=-1 hearth.discard_check${extra_append:+ $extra_append}"
        -serial "file:$tmp/console.log"
        -qmp "unix:$tmp/qmp.sock,server=on,wait=off"
        -drive "file=$tmp/overlay.qcow2,format=qcow2,if=none,id=disk0,discard=unmap,throttling.iops-total=$iops"
        -device virtio-blk-pci,drive=disk0,id=virtio-disk0
        -drive "file=$tmp/seed.iso,format=raw,if=none,id=seed0,readonly=on"
        -device virtio-blk-pci,drive=seed0,id=virtio-disk1
        -netdev user,id=net0,restrict=on
        -device "virtio-net-pci,netdev=net0,mac=$mac"
    )
    printf '%s\n' "${args[@]}"
}

# Polls the console file for a marker line until a deadline or QEMU's exit.
wait_for_marker() {
    local marker=$1 deadline_us=$(($(now_us) + $2 * 1000000))
    while [ "$(now_us)" -lt "$deadline_us" ]; do
        grep -q "^$marker" "$tmp/console.log" 2>/dev/null && return 0
        kill -0 "$qemu_pid" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

# Prints its arguments as a command line to paste, quoting only those that need it.
shell_words() {
    local word
    for word in "$@"; do
        if [[ "$word" =~ [^A-Za-z0-9_./:=,+@%-] ]]; then printf "'%s' " "$word"; else printf '%s ' "$word"; fi
    done
}

# Starts QEMU; returns non-zero if it does not reach the UP marker.
launch() {
    local accel=$1 args
    mapfile -t args < <(qemu_args "$accel")
    rm -f "$tmp/console.log" "$tmp/qmp.sock"
    say "qemu-system-x86_64 $(shell_words "${args[@]}")"
    t_launch=$(now_us)
    qemu-system-x86_64 "${args[@]}" 2> "$tmp/qemu.log" &
    qemu_pid=$!
    qmp "$tmp/qmp.sock" query-status > "$tmp/status.json" || return 1
    t_qmp=$(now_us)
    wait_for_marker HEARTH-GUEST-UP "$ready_deadline_s" || return 1
    t_up=$(now_us)
}

show_failure() {
    say "QEMU stderr:"
    sed 's/^/    /' "$tmp/qemu.log" >&2 || true
    say "console:"
    tail -n 20 "$tmp/console.log" 2>/dev/null | sed 's/^/    /' >&2 || true
}

# Prints the fields of query-block that matter to hearth: the backing chain and the limits.
show_block() {
    qmp "$tmp/qmp.sock" query-block | "$python" -c '
import json, sys
for dev in json.load(sys.stdin):
    ins = dev.get("inserted")
    if not ins:
        continue
    image = ins.get("image", {})
    print("    %s (%s): file=%s format=%s backing=%s ro=%s" % (dev["device"], dev.get("qdev"), ins["file"],
          image.get("format"), image.get("backing-filename", "-"), ins["ro"]))
    limits = {k: ins[k] for k in ("iops", "iops_rd", "iops_wr", "bps", "bps_rd", "bps_wr")}
    print("        throttling: %s group=%s detect_zeroes=%s"
          % (json.dumps(limits), ins.get("group", "-"), ins["detect_zeroes"]))
'
}

make_seed
case "$accel_choice" in
    auto) accel=$(detect_accel) ;;
    kvm | tcg) accel=$accel_choice ;;
    *) usage ;;
esac
if ! launch "$accel"; then
    show_failure
    if [ "$accel_choice" = auto ] && [ "$accel" = kvm ]; then
        say "kvm did not boot the guest; falling back to tcg"
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
        accel=tcg
        launch tcg || { show_failure; die "the guest did not come up under tcg either"; }
    else
        die "the guest did not come up"
    fi
fi
say "QMP answered after $(ms_between "$t_launch" "$t_qmp") ms: $(cat "$tmp/status.json")"
say "HEARTH-GUEST-UP after $(ms_between "$t_launch" "$t_up") ms"
wait_for_marker HEARTH-GUEST-READY "$ready_deadline_s" || { show_failure; die "no READY marker"; }
t_ready=$(now_us)
say "HEARTH-GUEST-READY after $(ms_between "$t_launch" "$t_ready") ms ($accel)"
# The guest's tty turns each newline into CR LF.
tr -d '\r' < "$tmp/console.log" | grep '^HEARTH-GUEST' | sed 's/^/    /'
expected="HEARTH-GUEST hostname=$guest_hostname ip=$address keys=1"
tr -d '\r' < "$tmp/console.log" | grep -qx "$expected" || die "the guest line is not \"$expected\""

say "query-block (started with throttling.iops-total=$iops):"
show_block
say "block_set_io_throttle virtio-disk0 iops=$((iops * 2)), then query-block:"
# "id" is the QOM path of the guest device that holds the drive: for virtio-blk-pci that is the
# virtio device inside the PCI proxy, as query-block's "qdev" shows. Every limit must be given,
# 0 meaning none.
qmp "$tmp/qmp.sock" block_set_io_throttle "{\"id\": \"/machine/peripheral/virtio-disk0/virtio-backend\", \"iops\": $((iops * 2)),
    \"iops_rd\": 0, \"iops_wr\": 0, \"bps\": 0, \"bps_rd\": 0, \"bps_wr\": 0}" > /dev/null
show_block

say "system_powerdown"
t_powerdown=$(now_us)
qmp "$tmp/qmp.sock" system_powerdown > /dev/null
wait_for_marker HEARTH-GUEST-DOWN "$powerdown_deadline_s" || { show_failure; die "no DOWN marker"; }
t_down=$(now_us)
deadline_us=$((t_powerdown + powerdown_deadline_s * 1000000))
while kill -0 "$qemu_pid" 2>/dev/null && [ "$(now_us)" -lt "$deadline_us" ]; do
    sleep 0.02
done
kill -0 "$qemu_pid" 2>/dev/null && { show_failure; die "QEMU still runs ${powerdown_deadline_s}s after system_powerdown"; }
t_exit=$(now_us)
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=""
say "HEARTH-GUEST-DOWN after $(ms_between "$t_powerdown" "$t_down") ms;" \
    "QEMU exited with status $qemu_status after $(ms_between "$t_powerdown" "$t_exit") ms"
say "timings (ms): qmp=$(ms_between "$t_launch" "$t_qmp") up=$(ms_between "$t_launch" "$t_up")" \
    "ready=$(ms_between "$t_launch" "$t_ready") powerdown_to_exit=$(ms_between "$t_powerdown" "$t_exit")"
[ "$qemu_status" -eq 0 ] || die "QEMU exited with status $qemu_status"

# The guest wrote 4 MiB at 16 MiB and discarded them: with discard=unmap the overlay holds no
# data there any more (the clusters read as zeroes), and its file stays small.
tr -d '\r' < "$tmp/console.log" | grep -q '^HEARTH-GUEST-DISCARD' || die "no DISCARD marker"
discarded_data=$(qemu-img map --output=json "$tmp/overlay.qcow2" | "$python" -c '
import json, sys
lo, hi = 16 << 20, 20 << 20
print(sum(max(0, min(e["start"] + e["length"], hi) - max(e["start"], lo))
          for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]))')
say "overlay after shutdown: $discarded_data bytes of data in the discarded 4 MiB," \
    "$(du -k "$tmp/overlay.qcow2" | cut -f1) KiB on disk"
[ "$discarded_data" -eq 0 ] || die "the guest's discard did not reach the overlay"
