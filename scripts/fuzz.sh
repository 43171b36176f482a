#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for SECONDS (default 60) on stable Rust,
# without a sanitizer (Rust code is memory-safe; the targets look for panics, hangs and
# broken properties). Installs cargo-fuzz when missing. A crashing input lands in
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ and the test suite replays
# it (crates/hearth/tests/fuzz_regressions.rs).
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(gossip dns api_json config)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd fuzz
for target in "${targets[@]}"; do
  echo "fuzz.sh: $target for ${seconds}s" >&2
  mkdir -p "corpus/$target"
  # Seed inputs: the committed regressions, so the fuzzer starts from known trouble.
  if [ -d "regressions/$target" ]; then cp -n regressions/"$target"/* "corpus/$target/" 2>/dev/null || true; fi
  cargo fuzz run --sanitizer none -O "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
