#!/usr/bin/env bash
# Fuzz smoke run for CI: builds every target of this cargo-fuzz project once, then runs each
# for FUZZ_SECONDS (default 10) starting from its seed corpus in corpus/<target>/.
# Exits non-zero if any target crashes, panics, hangs or fails to build; the crashing
# input is left in artifacts/<target>/ (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none
# <target> artifacts/<target>/<file>).
#
# Env: FUZZ_SECONDS (per target), FUZZ_TARGETS (space-separated subset),
#      FUZZ_TARGET_DIR (build dir, default fuzz/target).
# Needs cargo-fuzz (installed with `cargo install cargo-fuzz --locked` if missing) and
# nightly features: on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
seconds="${FUZZ_SECONDS:-10}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$here/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
# The code is safe Rust: no sanitizer (faster build and more executions per second).
echo "run-smoke: building $(echo $targets | wc -w) targets" >&2
cargo fuzz build --sanitizer none

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $targets; do
    # New inputs go to a scratch copy; the committed seed corpus stays small.
    mkdir -p "$scratch/$t"
    cp -r "corpus/$t/." "$scratch/$t/" 2>/dev/null || true
    echo "run-smoke: $t for ${seconds}s" >&2
    if ! cargo fuzz run --sanitizer none "$t" "$scratch/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 2>"$scratch/$t.log"; then
        tail -n 40 "$scratch/$t.log" >&2
        failed+=("$t")
    else
        grep -E "stat::number_of_executed_units|Done" "$scratch/$t.log" | tail -n 2 >&2 || true
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-smoke: FAILED: ${failed[*]} (inputs in $here/artifacts/)" >&2
    exit 1
fi
echo "run-smoke: all targets ran ${seconds}s without a crash" >&2
