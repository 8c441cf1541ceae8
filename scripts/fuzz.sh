#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 600 s each).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain the
# sanitizer flags are unlocked with RUSTC_BOOTSTRAP. The decode corpus starts
# from the example events; corpora live in fuzz/corpus (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode route)
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/decode fuzz/corpus/route
cp -n rules/tests/events/*.json fuzz/corpus/decode/
for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds}s"
  log=$(mktemp)
  if ! cargo fuzz run -O "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    if grep -q "failed to build fuzz script" "$log"; then
      echo "fuzz: $target did not build" >&2
    else
      echo "fuzz: $target FAILED (the crashing input is under fuzz/artifacts/$target)" >&2
    fi
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  rm -f "$log"
done
echo "fuzz: no crash in ${targets[*]} (${seconds}s each)"
