#!/usr/bin/env bash
# bench/spool-ab.sh: what the spool costs, measured side by side.
#
# Builds the release `ufsock` of this working tree, then runs `ufsock bench --mode send` at
# each concurrency for N interleaved rounds in three variants: the spool off, the spool on with
# its defaults (each send writes its record through to the OS), and the spool on with
# `--spool-batched` (the syncer writes, once per interval). The order of the variants reverses
# every round, so none always runs on a cooler machine. Prints, per concurrency and variant,
# the medians of msg/s, client CPU per message and peak RSS, and their ratios to spool off.
#
# Usage: bench/spool-ab.sh [--rounds N] [--concurrency LIST] [--requests N] [--sync group|every|never]
#   --rounds N          interleaved rounds (default 5)
#   --concurrency LIST  comma-separated concurrencies (default 1,16,64,256)
#   --requests N        messages per run (default 200000)
#   --sync P            the spool's sync policy for both spooled variants (default group)
set -euo pipefail

rounds=5
concurrencies=1,16,64,256
requests=200000
sync=group
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --concurrency) concurrencies=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        --sync) sync=$2; shift 2 ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -p ufsock --manifest-path "$root/Cargo.toml" >&2
bin="$root/target/release/ufsock"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
results="$scratch/results.txt"

for c in ${concurrencies//,/ }; do
    for r in $(seq 1 "$rounds"); do
        if ((r % 2)); then order="off write-through batched"; else order="batched write-through off"; fi
        for v in $order; do
            case $v in
                off) args=() ;;
                write-through) args=(--spool "$scratch/spool" --spool-sync "$sync") ;;
                batched) args=(--spool "$scratch/spool" --spool-sync "$sync" --spool-batched) ;;
            esac
            out=$("$bin" bench --mode send --concurrency "$c" --requests "$requests" "${args[@]}" 2>&1)
            rate=$(awk '/^  send /{print $2}' <<<"$out")
            cpu=$(awk '/client CPU/{print $6}' <<<"$out")
            rss=$(awk '/peak RSS/{print $4}' <<<"$out")
            echo "$c $r $v $rate $cpu $rss" | tee -a "$results" >&2
        done
    done
done

python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, _, v, rate, cpu, rss = line.split()
    runs[(int(c), v)].append((float(rate), float(cpu), float(rss)))
print("| concurrency | variant | msg/s | client CPU µs/msg | peak RSS MiB | vs off: msg/s | CPU | RSS |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in sorted({c for c, _ in runs}):
    base = [statistics.median(x[i] for x in runs[(c, "off")]) for i in range(3)]
    for v in ("off", "write-through", "batched"):
        m = [statistics.median(x[i] for x in runs[(c, v)]) for i in range(3)]
        print(f"| {c} | {v} | {m[0]:,.0f} | {m[1]:.2f} | {m[2]:.1f} | "
              f"{m[0] / base[0]:.2f}x | {m[1] / base[1]:.2f}x | {m[2] / base[2]:.2f}x |")
PY
