#!/usr/bin/env bash
# AddressSanitizer and ThreadSanitizer over the engine's tests: the library's unit tests, the
# cache, expiry, bounded and model tests, and the stress suite (nightly, with the standard
# library rebuilt instrumented by -Zbuild-std).
#
#   scripts/sanitizers.sh          # both
#   scripts/sanitizers.sh asan     # AddressSanitizer only
#   scripts/sanitizers.sh tsan     # ThreadSanitizer only
#
# Under ASan the crate is built with `--cfg evanesce_asan`: a node slot's payload is poisoned
# while the slot is free (slots go back to the arena's free list, never to the allocator, so
# ASan would not see a stale access to a recycled slot otherwise). The script also runs a
# death test that reads a released slot on purpose and checks that ASan reports it.
#
# Takes about 15 minutes on 2 cores (two instrumented builds of the standard library and the
# tests). Not part of `.ci/run`, which stays under its time budget; run it before landing a
# change to `src/raw/`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

which=${1:-all}
host=$(rustc -vV | sed -n 's/^host: //p')
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
rustup component add rust-src --toolchain nightly >/dev/null

# The tests the sanitizers run (the stress suite is #[ignore]d: run explicitly).
tests=(--lib --test cache --test expiry --test bounded --test model)

run() {
    local flags=$1 dir=$2
    shift 2
    RUSTFLAGS="$flags" RUSTDOCFLAGS="$flags" CARGO_TARGET_DIR="target/$dir" \
        cargo +nightly test -Zbuild-std --target "$host" --profile stress "$@"
}

if [[ $which == all || $which == asan ]]; then
    flags="-Zsanitizer=address --cfg evanesce_asan"
    echo "== AddressSanitizer: unit, cache, expiry, bounded, model tests"
    run "$flags" asan "${tests[@]}"
    echo "== AddressSanitizer: stress tests"
    run "$flags" asan --test stress -- --ignored --test-threads 1
    echo "== AddressSanitizer: a stale read of a recycled slot is reported"
    log=$(mktemp)
    if run "$flags" asan --lib a_stale_read_of_a_recycled_slot_is_reported -- --ignored \
        >"$log" 2>&1; then
        cat "$log"
        echo "error: the stale read went unreported" >&2
        exit 1
    fi
    if ! grep -q "use-after-poison" "$log"; then
        cat "$log"
        echo "error: the death test failed without ASan's use-after-poison report" >&2
        exit 1
    fi
    echo "reported: $(grep -m1 'ERROR: AddressSanitizer' "$log")"
    rm -f "$log"
fi

if [[ $which == all || $which == tsan ]]; then
    flags="-Zsanitizer=thread"
    echo "== ThreadSanitizer: unit, cache, expiry, bounded, model tests"
    TSAN_OPTIONS="halt_on_error=1" run "$flags" tsan "${tests[@]}"
    echo "== ThreadSanitizer: stress tests"
    TSAN_OPTIONS="halt_on_error=1" run "$flags" tsan --test stress -- --ignored --test-threads 1
fi

echo "== sanitizers: clean"
