#!/usr/bin/env bash
# Builds vigil's fuzz targets with the stable toolchain and runs each one for a fixed budget on
# its checked-in corpus (fuzz/corpus/<target>/), as CI does; a crash fails the script. New
# inputs go to a scratch directory, never into the checked-in corpus. See docs/FUZZING.md.
#
#   hack/fuzz.sh                 # every target, FUZZ_SECONDS (default 15) each
#   hack/fuzz.sh copy_file 600   # one target, 600 s
#
# cargo-fuzz needs nightly-only flags (-Z sanitizer options, -C passes=sancov-module);
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. Targets are built without a
# sanitizer (-s none: the code under test is safe Rust but for a few audited syscalls, and
# AddressSanitizer halves the execution rate) and with debug assertions (-a: overflow checks).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
flags=(-s none -a)
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz build: $(( $(date +%s) - start )) s"
if [ $# -ge 1 ]; then
    targets=("$1")
    seconds=${2:-${FUZZ_SECONDS:-15}}
else
    mapfile -t targets < <(cargo fuzz list)
    seconds=${FUZZ_SECONDS:-15}
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "$scratch/$t"
    echo "== fuzz $t (${seconds} s)"
    if ! cargo fuzz run "${flags[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$scratch/$t-" >"$scratch/$t.log" 2>&1; then
        tail -n 60 "$scratch/$t.log"
        echo "fuzz $t: FAILED; crash input(s), base64:"
        for a in "$scratch/$t-"*; do [ -e "$a" ] && { echo "  $a"; base64 -w0 "$a"; echo; }; done
        exit 1
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$t.log" || true
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash ($(( $(date +%s) - start )) s in all)"
