#!/usr/bin/env bash
# Builds hearth_<version>_<arch>.deb: the binary as /usr/bin/hearth, the systemd unit, bash
# and zsh completions and man pages (from the binary's clap definitions), and maintainer
# scripts that make the system user `hearth`, /var/lib/hearth (0700) and /etc/hearth (0750,
# group hearth). Removal keeps the data and config; purge removes both.
# The package is reproducible: every timestamp is the last commit's (SOURCE_DATE_EPOCH).
#
#   ./scripts/build-deb.sh [--binary PATH] [--version V] [--out DIR] [--compress xz|gzip|none]
#
# Without --binary it builds the release binary first (cargo build --release -p hearth).
# The shipped package is xz-compressed; the tests ask for none, which is faster.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
out="target/deb"
compress="xz"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  cargo build --release -p hearth
  binary="target/release/hearth"
fi
[ -x "$binary" ] || { echo "build-deb.sh: --binary: $binary is not an executable" >&2; exit 2; }

arch="$(dpkg --print-architecture)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
name="hearth_${version}_${arch}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"

install -D -m 0755 "$binary" "$root/usr/bin/hearth"
install -d -m 0755 "$root/lib/systemd/system"
sed 's#/usr/local/bin/hearth#/usr/bin/hearth#g' dist/hearth.service \
  > "$root/lib/systemd/system/hearth.service"
chmod 0644 "$root/lib/systemd/system/hearth.service"
install -D -m 0644 README.md "$root/usr/share/doc/hearth/README.md"
# Completions and man pages, from the binary's own command definitions.
install -d -m 0755 "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/man/man1"
"$binary" completions bash > "$root/usr/share/bash-completion/completions/hearth"
"$binary" completions zsh > "$root/usr/share/zsh/vendor-completions/_hearth"
"$binary" man --out "$root/usr/share/man/man1"
gzip -9 -n "$root"/usr/share/man/man1/*.1
find "$root/usr/share" -type f -exec chmod 0644 {} +

install -d -m 0755 "$root/DEBIAN"
size="$(du -k -s "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<EOF
Package: hearth
Version: $version
Architecture: $arch
Maintainer: hearth maintainers <hearth@example.invalid>
Installed-Size: $size
Depends: adduser, libc6
Recommends: qemu-system-x86, qemu-utils, genisoimage, iproute2, nftables, restic
Section: net
Priority: optional
Description: small, self-healing cloud for volunteer-run hosting
 One agent on every server: gossip membership and health checks, authoritative
 DNS that points only at healthy servers, desired state replicated with Raft,
 and members' QEMU virtual machines. Run "hearth init", then
 "systemctl enable --now hearth".
EOF

cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd hearth >/dev/null; then
    adduser --system --group --home /var/lib/hearth --no-create-home \
      --shell /usr/sbin/nologin hearth >/dev/null
  fi
  if getent group kvm >/dev/null; then
    adduser hearth kvm >/dev/null 2>&1 || true
  fi
  install -d -o hearth -g hearth -m 0700 /var/lib/hearth
  install -d -o root -g hearth -m 0750 /etc/hearth
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
fi
exit 0
EOF

cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop hearth >/dev/null 2>&1 || true
fi
exit 0
EOF

cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/hearth /etc/hearth
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
dpkg-deb --root-owner-group "-Z$compress" --build "$root" "$out/$name.deb" >/dev/null
echo "$out/$name.deb"
