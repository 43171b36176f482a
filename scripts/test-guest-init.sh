#!/bin/busybox sh
# /init of hearth's test guest (packed into initramfs.cpio.gz by build-test-guest.sh).
#
# A stand-in for a member's VM: it boots from the initramfs, reads its NoCloud seed like
# cloud-init would (hostname, static IP of the first NIC, SSH keys), says what it found on the
# serial console in fixed marker lines, and powers off on the ACPI power button
# (QMP `system_powerdown`). The markers are its whole interface; see docs/test-guest.md.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mkdir -p /proc /sys /dev /mnt/seed /root/.ssh /var/log /var/run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# devtmpfs creates device nodes as the drivers load. Without it (a kernel built without
# CONFIG_DEVTMPFS), mdev makes them on a tmpfs, by a rescan whenever the script waits for a
# device: Debian's kernel has no uevent helper to run mdev on each hotplug event.
use_mdev=""
if ! mount -t devtmpfs devtmpfs /dev 2>/dev/null; then
    mount -t tmpfs -o mode=0755 tmpfs /dev
    use_mdev=1
fi
refresh_dev() { [ -z "$use_mdev" ] || mdev -s; }
refresh_dev

# Markers go to the console (ttyS0 through console=ttyS0), whatever stdout is.
say() { echo "$*" > /dev/console; }

# Polls for a path until a deadline, because drivers create devices asynchronously.
wait_for() {
    n_tries=0
    while [ ! -e "$1" ] && [ "$n_tries" -lt "$2" ]; do
        usleep 20000
        refresh_dev
        n_tries=$((n_tries + 1))
    done
    [ -e "$1" ]
}

# The build script resolved the dependencies: this list is already in load order.
while read -r module; do
    insmod "/lib/modules/$module.ko" 2>/dev/null || say "HEARTH-GUEST-WARN insmod $module failed"
done < /etc/modules.order
refresh_dev

say "HEARTH-GUEST-UP"

# The NoCloud seed is the disk labelled cidata (iso9660 or vfat, whose labels are uppercase).
find_seed() {
    n_tries=0
    while [ "$n_tries" -lt 150 ]; do
        for label in cidata CIDATA; do
            seed_dev=$(findfs "LABEL=$label" 2>/dev/null) && { echo "$seed_dev"; return 0; }
        done
        usleep 20000
        refresh_dev
        n_tries=$((n_tries + 1))
    done
    return 1
}

# Strips quotes, carriage returns and a trailing comment from a YAML scalar.
yaml_scalar() { sed -e 's/[[:space:]]#.*$//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
    -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/" | tr -d '\r'; }

# Prints "ADDRESSES GATEWAY4 GATEWAY6" of the first NIC of a network-config v2 file
# (ADDRESSES comma-separated, "-" for none). It knows just enough YAML for what cloud-init
# documents: `addresses:` as a block or flow list (not the one under `nameservers:`),
# `gateway4:`, `gateway6:`, or routes `to: default` / `0.0.0.0/0` / `::/0` with their `via:`.
parse_network_config() {
    tr -d '\r' < "$1" | awk '
        function indent(s) { match(s, /^ */); return RLENGTH }
        function unquote(s) {
            sub(/#.*/, "", s); gsub(/[[:space:]]/, "", s); gsub(/"/, "", s); gsub("\047", "", s)
            gsub(/\[/, "", s); gsub(/\]/, "", s); return s
        }
        function add(a) { if (a != "") addrs = (addrs == "" ? a : addrs "," a) }
        function end_route() {
            if (route_via ~ /:/) { if ((route_to == "default" || route_to == "::/0") && gw6 == "") gw6 = route_via }
            else if ((route_to == "default" || route_to == "0.0.0.0/0") && gw == "") gw = route_via
            route_to = ""; route_via = ""
        }
        /^[[:space:]]*(#|$)/ { next }
        {
            ind = indent($0)
            if (in_ns && ind <= ns_ind) in_ns = 0
            if (in_addr && ind <= addr_ind && $0 !~ /^[[:space:]]*-/) in_addr = 0
            if (in_routes && ind <= routes_ind && $0 !~ /^[[:space:]]*-/) { end_route(); in_routes = 0 }
        }
        /^[[:space:]]*nameservers:/ { in_ns = 1; ns_ind = ind; next }
        in_ns { next }
        /^[[:space:]]*addresses:/ {
            rest = $0; sub(/^[^:]*:/, "", rest)
            if (rest ~ /\[/) { n = split(unquote(rest), items, ","); for (i = 1; i <= n; i++) add(items[i]) }
            else { in_addr = 1; addr_ind = ind }
            next
        }
        in_addr && /^[[:space:]]*-/ { item = $0; sub(/^[[:space:]]*-/, "", item); add(unquote(item)); next }
        /^[[:space:]]*gateway4:/ { v = $0; sub(/^[^:]*:/, "", v); gw = unquote(v); next }
        /^[[:space:]]*gateway6:/ { v = $0; sub(/^[^:]*:/, "", v); gw6 = unquote(v); next }
        /^[[:space:]]*routes:/ { in_routes = 1; routes_ind = ind; next }
        in_routes {
            line = $0
            if (line ~ /^[[:space:]]*-/) { end_route(); sub(/-/, " ", line) }
            if (line ~ /^[[:space:]]*to:/) { sub(/^[^:]*:/, "", line); route_to = unquote(line) }
            else if (line ~ /^[[:space:]]*via:/) { sub(/^[^:]*:/, "", line); route_via = unquote(line) }
        }
        END {
            if (in_routes) end_route()
            print (addrs == "" ? "-" : addrs), (gw == "" ? "-" : gw), (gw6 == "" ? "-" : gw6)
        }
    '
}

hostname_=""
addresses=""
address=""
gateway=""
gateway6=""
n_keys=0
instance_id=""
if seed_dev=$(find_seed); then
    if mount -t iso9660 -o ro "$seed_dev" /mnt/seed 2>/dev/null \
        || mount -t vfat -o ro "$seed_dev" /mnt/seed 2>/dev/null; then
        seed=/mnt/seed
        if [ -f $seed/meta-data ]; then
            hostname_=$(sed -n 's/^local-hostname:\(.*\)$/\1/p' $seed/meta-data | head -n 1 | yaml_scalar)
            instance_id=$(sed -n 's/^instance-id:\(.*\)$/\1/p' $seed/meta-data | head -n 1 | yaml_scalar)
        fi
        if [ -f $seed/network-config ]; then
            read -r addresses gateway gateway6 <<EOF
$(parse_network_config $seed/network-config)
EOF
            [ "$addresses" = "-" ] && addresses=""
            [ "$gateway" = "-" ] && gateway=""
            [ "$gateway6" = "-" ] && gateway6=""
            address=${addresses%%,*}
        fi
        if [ -f $seed/user-data ]; then
            # Every list item that is a public key counts, wherever it sits
            # (top-level ssh_authorized_keys or under users:).
            grep -E '^[[:space:]]*-[[:space:]]*["'"'"']?(ssh-(rsa|ed25519|dss)|ecdsa-sha2-|sk-)' $seed/user-data \
                | sed -e 's/^[[:space:]]*-[[:space:]]*//' | yaml_scalar > /root/.ssh/authorized_keys
            n_keys=$(grep -c . /root/.ssh/authorized_keys)
        fi
    else
        say "HEARTH-GUEST-WARN seed $seed_dev mounts neither as iso9660 nor as vfat"
    fi
else
    say "HEARTH-GUEST-WARN no disk labelled cidata"
fi

if [ -n "$hostname_" ]; then
    hostname "$hostname_"
    echo "$hostname_" > /etc/hostname
fi

ip link set lo up
if wait_for /sys/class/net/eth0 150; then
    # IPv6 addresses without duplicate address detection (busybox ip has no nodad), so they
    # work at once: the anti-spoofing rules are what keep neighbours apart.
    echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad 2>/dev/null
    # A test of anti-spoofing boots a guest that takes another's MAC (hearth.mac=MAC).
    other_mac=$(sed -n 's/.*hearth\.mac=\([^ ]*\).*/\1/p' /proc/cmdline)
    [ -n "$other_mac" ] && ip link set eth0 address "$other_mac"
    ip link set eth0 up
    # Every address of the seed.
    for a in $(echo "$addresses" | tr ',' ' '); do
        case "$a" in
            *:*) ip -6 addr add "$a" dev eth0 ;;
            *) ip addr add "$a" dev eth0 ;;
        esac
    done
    # A test of anti-spoofing boots a guest that also takes addresses not its own
    # (hearth.extra_ip=CIDR,CIDR,...).
    extra_ip=$(sed -n 's/.*hearth\.extra_ip=\([^ ]*\).*/\1/p' /proc/cmdline)
    for a in $(echo "$extra_ip" | tr ',' ' '); do
        case "$a" in
            *:*) ip -6 addr add "$a" dev eth0 ;;
            *) ip addr add "$a" dev eth0 ;;
        esac
    done
    [ -n "$gateway" ] && ip route add default via "$gateway" dev eth0 2>/dev/null
    [ -n "$gateway6" ] && ip -6 route add default via "$gateway6" dev eth0 2>/dev/null
    mac=$(cat /sys/class/net/eth0/address)
else
    say "HEARTH-GUEST-WARN no eth0"
    mac=""
fi

# The root disk: its size, whether the guest may discard on it, and the base image's marker
# (read through the overlay, so it proves the overlay's backing chain works).
if wait_for /dev/vda 150; then
    disk_bytes=$(($(cat /sys/block/vda/size) * 512))
    discard_max=$(cat /sys/block/vda/queue/discard_max_bytes)
    base_marker=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9 .=_-')
    say "HEARTH-GUEST-DISK dev=vda bytes=$disk_bytes discard_max_bytes=$discard_max base=\"$base_marker\""
    # The boot counter lives on the VM's own disk, at 1 MiB (zeros in the base image): a VM
    # that kept its disk says boots=N+1, one started on a blank disk says boots=1 again.
    boots=$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Z0-9 -')
    case "$boots" in
        "HEARTH-BOOTS "[0-9]*) boots=$((${boots#HEARTH-BOOTS } + 1)) ;;
        *) boots=1 ;;
    esac
    if printf 'HEARTH-BOOTS %s\n' "$boots" \
        | dd of=/dev/vda bs=512 seek=2048 count=1 conv=notrunc,sync,fsync 2>/dev/null; then
        say "HEARTH-GUEST-BOOTS n=$boots"
    else
        say "HEARTH-GUEST-WARN cannot write the boot counter"
    fi
    # The last tick the previous boot wrote (at 2 MiB; see the loop at the end): proves that
    # writes made while a VM was moving live reached the disk it has now.
    last_tick=$(dd if=/dev/vda bs=512 skip=4096 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Z0-9 -')
    case "$last_tick" in
        "HEARTH-TICK "[0-9]*) say "HEARTH-GUEST-LAST-TICK boot=$((boots - 1)) n=${last_tick#HEARTH-TICK }" ;;
    esac
    # With hearth.discard_check on the command line, write 4 MiB at 16 MiB and discard them
    # again: the host then sees whether the discard reached the overlay (discard=unmap).
    if grep -q 'hearth.discard_check' /proc/cmdline; then
        if dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=16 conv=fsync 2>/dev/null \
            && blkdiscard -o 16777216 -l 4194304 /dev/vda; then
            say "HEARTH-GUEST-DISCARD offset=16777216 bytes=4194304"
        else
            say "HEARTH-GUEST-WARN the write-and-discard check failed"
        fi
    fi
else
    say "HEARTH-GUEST-WARN no /dev/vda"
fi

say "HEARTH-GUEST-NET dev=eth0 mac=$mac gateway=$gateway instance-id=$instance_id"
say "HEARTH-GUEST-ADDRESSES all=$addresses gateway6=$gateway6"
say "HEARTH-GUEST hostname=$(hostname) ip=$address keys=$n_keys"

# busybox acpid turns the power button (the button module's input device, read through
# evdev) into "PWRF 00000080" and runs /etc/acpi/PWRF/00000080.
mkdir -p /etc/acpi/PWRF
cat > /etc/acpi/PWRF/00000080 <<'EOF'
#!/bin/sh
echo "HEARTH-GUEST-DOWN" > /dev/console
sync
poweroff -f
EOF
chmod 0755 /etc/acpi/PWRF/00000080
wait_for /dev/input/event0 150 || say "HEARTH-GUEST-WARN no input device for the power button"
acpid -c /etc/acpi -l /var/log/acpid.log -p /var/run/acpid.pid

# Network exercises for the bridge tests, from the kernel command line:
# - hearth.ping=IP,IP,...: ping each once a second, saying on the console whenever one's
#   answer changes (HEARTH-GUEST-PING ip=IP ok=1|0);
# - hearth.sink=PORT: take TCP connections on PORT and throw what they send away;
# - hearth.source=IP:PORT: send zeros to IP:PORT over TCP, reconnecting, without end.
cmdline_value() { sed -n "s/.*hearth\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
ping_targets=$(cmdline_value ping)
if [ -n "$ping_targets" ]; then
    (
        for t in $(echo "$ping_targets" | tr ',' ' '); do echo "$t -"; done > /tmp/pings
        while true; do
            for t in $(echo "$ping_targets" | tr ',' ' '); do
                if ping -c 1 -W 1 "$t" >/dev/null 2>&1; then ok=1; else ok=0; fi
                if ! grep -qx "$t $ok" /tmp/pings; then
                    say "HEARTH-GUEST-PING ip=$t ok=$ok"
                    grep -v "^$t " /tmp/pings > /tmp/pings.new
                    echo "$t $ok" >> /tmp/pings.new
                    mv /tmp/pings.new /tmp/pings
                fi
            done
            sleep 1
        done
    ) &
fi
sink_port=$(cmdline_value sink)
if [ -n "$sink_port" ]; then
    ( while true; do nc -l -p "$sink_port" > /dev/null 2>&1; done ) &
fi
source_to=$(cmdline_value source)
if [ -n "$source_to" ]; then
    ( while true; do
        dd if=/dev/zero bs=65536 count=100000 2>/dev/null | nc "${source_to%:*}" "${source_to##*:}" 2>/dev/null
        sleep 1
    done ) &
fi

# A shell on the serial port, for the interactive console tests: what is typed into the
# console runs here, and its answer comes back on the same port (and into the console log).
if [ -e /dev/ttyS0 ]; then
    setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1' &
fi

say "HEARTH-GUEST-READY"

# hearth.write_bench=MIB (the rbd-write benchmark): MIB MiB of random data written to the
# disk at 64 MiB in 1 MiB O_DIRECT writes, flushed at the end, then 2000 4 KiB O_DIRECT
# writes one at a time, flushed at the end; the uptime (in 1/100 s) before and after each,
# for the host to turn into figures. Before the ticks start, so nothing else writes.
write_bench=$(cmdline_value write_bench)
if [ -n "$write_bench" ] && [ -e /dev/vda ]; then
    dd if=/dev/urandom of=/tmp/random bs=1M count=16 2>/dev/null
    t0=$(cut -d' ' -f1 /proc/uptime)
    chunk=0
    while [ $((chunk * 16)) -lt "$write_bench" ]; do
        dd if=/tmp/random of=/dev/vda bs=1M count=16 seek=$((64 + chunk * 16)) \
            oflag=direct conv=notrunc 2>/dev/null
        chunk=$((chunk + 1))
    done
    sync
    t1=$(cut -d' ' -f1 /proc/uptime)
    dd if=/tmp/random of=/dev/vda bs=4096 count=2000 seek=$((512 * 256)) \
        oflag=direct conv=notrunc,fsync 2>/dev/null
    t2=$(cut -d' ' -f1 /proc/uptime)
    say "HEARTH-GUEST-WRITE-BENCH mib=$((chunk * 16)) t0=$t0 t1=$t1 small=2000 t2=$t2"
fi

# PID 1 must never exit (the kernel would panic). It ticks once a second: the number written
# through to the disk at 2 MiB, then a numbered line on the console once the write completed
# (HEARTH-GUEST-TICK-FAILED when the disk refused it, as Ceph does for a fenced client), so a
# test sees that a VM moved live runs on (the ticks go on, no new boot) and that its disk
# kept every write the guest saw complete.
tick=0
while true; do
    sleep 1
    tick=$((tick + 1))
    if [ -e /dev/vda ] && ! printf 'HEARTH-TICK %s\n' "$tick" \
        | dd of=/dev/vda bs=512 seek=4096 count=1 conv=notrunc,sync,fsync 2>/dev/null; then
        say "HEARTH-GUEST-TICK-FAILED n=$tick"
    else
        say "HEARTH-GUEST-TICK n=$tick"
    fi
done
