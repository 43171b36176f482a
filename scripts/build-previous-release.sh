#!/usr/bin/env bash
# Builds the previous release of hearth (named in dist/previous-release: a tag and its
# commit) into OUTDIR/hearth, for the rolling-upgrade test. The source comes from this
# checkout's git history (`git archive` of the commit, so the tag itself need not be here);
# it builds in OUTDIR/target with the same toolchain and its own Cargo.lock. A re-run with
# OUTDIR/hearth already built from that commit does nothing.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ "$#" -eq 1 ] || usage

cd "$(dirname "$0")/.."
read -r tag commit < <(grep -v '^#' dist/previous-release | grep -v '^[[:space:]]*$' | head -n 1)
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
if [ -x "$outdir/hearth" ] && [ "$(cat "$outdir/commit" 2>/dev/null)" = "$commit" ]; then
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "build-previous-release.sh: commit $commit ($tag) is not in this checkout's history;" >&2
  echo "  clone without --depth (or run: git fetch --unshallow) and try again" >&2
  exit 1
fi
echo "build-previous-release.sh: building $tag ($commit) in $outdir" >&2
rm -rf "$outdir/src"
mkdir -p "$outdir/src"
git archive "$commit" | tar -x -C "$outdir/src"
# Unoptimized, with no debug info and no incremental cache: it only has to run, and so it
# builds in about a minute on two cores instead of five.
(cd "$outdir/src" && CARGO_TARGET_DIR="$outdir/target" CARGO_PROFILE_DEV_DEBUG=0 \
  CARGO_PROFILE_DEV_OPT_LEVEL=0 CARGO_INCREMENTAL=0 \
  cargo build --locked --quiet --bin hearth --config 'profile.dev.package."*".opt-level=0')
cp "$outdir/target/debug/hearth" "$outdir/hearth.new"
mv "$outdir/hearth.new" "$outdir/hearth"
echo "$commit" > "$outdir/commit"
echo "$tag" > "$outdir/tag"
