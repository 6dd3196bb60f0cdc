#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (CI and local). Usage: fuzz/run.sh [seconds] [target...]
# New inputs go to fuzz/target/corpus/<target> (scratch, gitignored); the committed seeds in
# fuzz/corpus/<target> are read only. On a finding, prints the reproducer and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-45}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decode pool_ops config spool_read)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
cargo +nightly fuzz build

status=0
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t" "artifacts/$t"
    echo "== fuzz $t for ${secs}s"
    if ! cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
        status=1
        echo "!! fuzz target $t failed. Reproducer(s):"
        for f in "artifacts/$t"/*; do
            [ -f "$f" ] || continue
            echo "--- $f ($(wc -c <"$f") bytes), hex:"
            od -An -tx1 -v "$f" | head -64
            echo "--- reproduce: (cd fuzz && cargo +nightly fuzz run $t $f)"
            if [ "$t" = spool_read ]; then
                echo "--- or add it to the seeds in client/src/spool/tests.rs and run: cargo test -p usageflow-socket-client --features spool --lib spool"
            else
                echo "--- or add it to fuzz/corpus/$t/ and run: cargo test -p usageflow-socket-tests --test fuzz_corpus"
            fi
        done
    fi
done
exit $status
