#!/usr/bin/env bash
# Runs hearth's whole test suite on a fresh Debian machine with Rust: installs what the
# tests need (dig from dnsutils, knotd from knot as the external primary of the push tests
# and as the root zone of the Zonemaster test, zonemaster-cli,
# nftables and iptables for the chaos runner, prometheus for the monitoring tests, python3-venv for Schemathesis, chromium and chromium-driver for the web panel's browser
# tests, libfaketime to move an agent's clock to a month's end, restic for backups, a single-node Ceph's daemons, QEMU with its rbd driver and the test guest for the VM tests), then runs every test with cargo-nextest (or cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
command -v kill >/dev/null 2>&1 || need+=(procps)
# ping, from the host side of a bridge to a bridged guest.
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
# ip netns for the partition tests.
PATH="$PATH:/usr/sbin:/sbin" command -v ip >/dev/null 2>&1 || need+=(iproute2)
# knotd lives in /usr/sbin, which is not on every user's PATH.
PATH="$PATH:/usr/sbin:/sbin" command -v knotd >/dev/null 2>&1 || need+=(knot)
# The chaos runner filters the bridge of its network namespaces with nftables.
PATH="$PATH:/usr/sbin:/sbin" command -v nft >/dev/null 2>&1 || need+=(nftables)
# Its delay fault queues packets to userspace with the xtables NFQUEUE target (this kernel
# lacks nftables' own `queue`), set through iptables-nft.
PATH="$PATH:/usr/sbin:/sbin" command -v iptables-nft >/dev/null 2>&1 || need+=(iptables)
# The DNS servers are checked as registries check a delegation, with Zonemaster.
command -v zonemaster-cli >/dev/null 2>&1 || need+=(zonemaster-cli)
# The Debian package's test installs it, and its postinst makes the user with adduser.
PATH="$PATH:/usr/sbin:/sbin" command -v adduser >/dev/null 2>&1 || need+=(adduser)
# The shipped systemd unit is checked with systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The shipped alerting rules are checked with promtool, and a real Prometheus scrapes a
# three-agent cluster.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# Schemathesis (from PyPI, in a virtualenv under target/) checks the API against its
# OpenAPI description.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# Backups go into restic repositories.
command -v restic >/dev/null 2>&1 || need+=(restic)
# The RBD tests start a real single-node Ceph (a monitor, a manager, a memstore OSD).
command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
command -v ceph-mgr >/dev/null 2>&1 || need+=(ceph-mgr)
command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
command -v rbd >/dev/null 2>&1 || need+=(ceph-common)
# A member's month end moves the agent's wall clock with libfaketime.
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
# The web panel's end-to-end tests drive Debian's headless Chromium through chromedriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

SCHEMATHESIS_VERSION=4.32.5
if ! target/schemathesis/bin/st --version 2>/dev/null | grep -qx "st, version $SCHEMATHESIS_VERSION"; then
  echo "test.sh: installing schemathesis $SCHEMATHESIS_VERSION in target/schemathesis" >&2
  rm -rf target/schemathesis
  python3 -m venv target/schemathesis
  target/schemathesis/bin/pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The backup tests store into an S3 bucket as well as a directory: moto's S3 server, from
# PyPI (Debian has no S3 server, nor restic's rest-server).
MOTO_VERSION=5.2.6
if ! target/moto/bin/python -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "test.sh: installing moto $MOTO_VERSION (an S3 server) in target/moto" >&2
  rm -rf target/moto
  python3 -m venv target/moto
  target/moto/bin/pip install -q "moto[server]==$MOTO_VERSION"
fi

# The VM tests boot a tiny guest under qemu-system-x86_64: the script installs QEMU and
# genisoimage and builds the guest from Debian's kernel and busybox (quick when up to date).
./scripts/build-test-guest.sh target/test-guest

# The rolling-upgrade test starts a cluster on the previous release (dist/previous-release),
# built from this checkout's history into target/previous-release (once per release).
./scripts/build-previous-release.sh target/previous-release

# One test runs the README's quick start exactly as written (`cargo run -- agent --dev`) in a
# user's minimal environment. It shares every compiled crate with the test build (the
# workspace's dependencies ask for the features the tests turn on), so it compiles nothing.

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
