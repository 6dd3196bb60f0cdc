#!/usr/bin/env bash
# bench/ab.sh: before/after throughput and client CPU of `ufsock bench`, measured side by side.
#
# Builds REV (release `ufsock`) in a scratch worktree under target/ab/, builds this working
# tree (or --b REV2), starts ONE reply server, then runs the two clients against it interleaved
# for N rounds at each concurrency (the order alternates every round, so neither side always
# runs on a cooler machine), and prints per concurrency: medians of req/s and of client CPU
# per request (user + sys from /usr/bin/time over completed requests), their ratio B/A, and in
# how many rounds B was faster / slower. Paired rounds make a few-percent change visible on a
# noisy machine where one run each cannot.
#
# Usage: bench/ab.sh REV [options] [-- extra `ufsock bench` args for both sides]
#   REV                 the "A" side: any git revision (commit, branch, tag)
#   --b REV2            the "B" side: another revision (default: this working tree, uncommitted
#                       changes included)
#   --rounds N          interleaved rounds (default 5)
#   --concurrency LIST  comma-separated concurrencies (default 16,64)
#   --requests N        requests per run (default 400000)
#   --pool N            connections (default 10)
#   --runtime R         tokio or smol for both sides (default: ufsock's, tokio; or per side
#                       through --a-args/--b-args, e.g. --b-args "--runtime smol")
#   --mode M            ufsock bench mode (default request)
#   --a-args "..."      extra `ufsock bench` args for A only (e.g. "--runtime tokio")
#   --b-args "..."      extra `ufsock bench` args for B only (e.g. "--runtime smol")
#   --server-bin PATH   the reply server binary (`PATH serve`; default: A's ufsock)
#   --url URL --key K   use a running server instead of starting one
#   --json FILE         also write every run (side, round, concurrency, figures) as JSON lines
#   --build-only        build (or find cached) the binaries, print their paths, and stop
#
# The server is started once and shared by both sides, so a change to the server between the
# revisions cannot show up as a change of the client. By default it is A's `ufsock serve`: the
# same server for every comparison against the same REV.
#
# Environment: AB_DIR (scratch dir, default <repo>/target/ab; its target/ is reused, so
# rebuilding another revision is incremental), CARGO (default cargo).
set -euo pipefail

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[[ $# -ge 1 ]] || usage
case "$1" in -h | --help) usage 0 ;; esac
rev_a=$1
shift
rev_b=""
rounds=5
concurrencies=16,64
requests=400000
pool=10
runtime=""
mode=request
a_args=""
b_args=""
server_bin=""
url=""
key=""
json_out=""
build_only=""
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --b) rev_b=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --concurrency) concurrencies=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --pool) pool=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --a-args) a_args=$2; shift 2 ;;
    --b-args) b_args=$2; shift 2 ;;
    --server-bin) server_bin=$2; shift 2 ;;
    --url) url=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage 0 ;;
    *) echo "ab.sh: unknown option $1" >&2; usage ;;
    esac
done
for tool in jq awk git /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "ab.sh: needs $tool" >&2; exit 2; }
done

root=$(git rev-parse --show-toplevel)
ab_dir=${AB_DIR:-$root/target/ab}
cargo=${CARGO:-cargo}
mkdir -p "$ab_dir/bin"

# Builds revision $1 in the scratch worktree (one worktree, one target dir: switching
# revisions rebuilds only what changed) and prints the path of its cached binary.
build_rev() {
    local sha wt=$ab_dir/wt bin
    sha=$(git -C "$root" rev-parse --verify "$1^{commit}")
    bin=$ab_dir/bin/ufsock-${sha:0:12}
    if [[ ! -x $bin ]]; then
        if [[ ! -e $wt/.git ]]; then
            git -C "$root" worktree add --detach --force "$wt" "$sha" >&2
        else
            git -C "$wt" checkout --quiet --detach --force "$sha"
        fi
        echo "ab.sh: building ${sha:0:12} in $wt" >&2
        (cd "$wt" && CARGO_TARGET_DIR=$ab_dir/target "$cargo" build --release --quiet -p ufsock) >&2
        cp "$ab_dir/target/release/ufsock" "$bin"
    fi
    echo "$bin"
}

bin_a=$(build_rev "$rev_a")
if [[ -n $rev_b ]]; then
    bin_b=$(build_rev "$rev_b")
    label_b=$(git -C "$root" rev-parse --short "$rev_b")
else
    echo "ab.sh: building the working tree" >&2
    (cd "$root" && "$cargo" build --release --quiet -p ufsock) >&2
    bin_b=$ab_dir/bin/ufsock-worktree
    cp "$root/target/release/ufsock" "$bin_b"
    label_b="worktree"
    [[ -z $(git -C "$root" status --porcelain --untracked-files=no) ]] ||
        label_b="worktree+changes"
fi
label_a=$(git -C "$root" rev-parse --short "$rev_a")
if [[ -n $build_only ]]; then
    echo "$bin_a"
    echo "$bin_b"
    exit 0
fi

tmp=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z $url ]]; then
    key="ab-bench-key"
    "${server_bin:-$bin_a}" serve --addr 127.0.0.1:0 --key "$key" 2>"$tmp/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        url=$(sed -n 's/^ufsock: serving on //p' "$tmp/server.log")
        [[ -n $url ]] && break
        sleep 0.1
    done
    [[ -n $url ]] || { echo "ab.sh: the server did not start:" >&2; cat "$tmp/server.log" >&2; exit 1; }
fi
[[ -n $key ]] || { echo "ab.sh: --url needs --key" >&2; exit 2; }

echo "ab.sh: A = $label_a ($bin_a) ${a_args}" >&2
echo "ab.sh: B = $label_b ($bin_b) ${b_args}" >&2
echo "ab.sh: server ${url%%\?*}, $rounds rounds, concurrency $concurrencies, $requests requests, pool $pool, $mode on ${runtime:-the default runtime}" >&2

results=$tmp/results # lines: concurrency side round req/s cpu_us_per_request errors
: >"$results"

# One run of side $1 (A or B) at concurrency $2 in round $3.
run_side() {
    local side=$1 c=$2 r=$3 bin args out=$tmp/run.json times=$tmp/time
    if [[ $side == A ]]; then bin=$bin_a args=$a_args; else bin=$bin_b args=$b_args; fi
    # shellcheck disable=SC2086 # the per-side args are meant to split into words
    if ! /usr/bin/time -f '%U %S' -o "$times" "$bin" bench --url "$url" --key "$key" --json \
        --mode "$mode" ${runtime:+--runtime "$runtime"} --pool "$pool" --concurrency "$c" \
        --requests "$requests" "${extra[@]}" $args >"$out" 2>"$tmp/run.err"; then
        # Exit code 1 = the run had errors (still a measurement); anything else is fatal.
        if ! jq -e '.runs[0]' "$out" >/dev/null 2>&1; then
            echo "ab.sh: $side run failed:" >&2
            cat "$tmp/run.err" >&2
            exit 1
        fi
    fi
    local rate completed errors cpu_s cpu_us
    rate=$(jq '.runs[-1].ops_per_s' "$out")
    completed=$(jq '.runs[-1].completed' "$out")
    errors=$(jq '.runs[-1].error_total' "$out")
    cpu_s=$(awk '{print $1 + $2}' "$times")
    cpu_us=$(awk -v s="$cpu_s" -v n="$completed" 'BEGIN{printf "%.3f", (n > 0 ? s * 1e6 / n : 0)}')
    echo "$c $side $r $rate $cpu_us $errors" >>"$results"
    printf 'ab.sh: round %d/%d  c=%-4s %s  %9.0f req/s  %6.2f us CPU/request%s\n' \
        "$r" "$rounds" "$c" "$side" "$rate" "$cpu_us" \
        "$([[ $errors == 0 ]] || echo "  ($errors errors)")" >&2
    if [[ -n $json_out ]]; then
        jq -c --arg side "$side" --argjson round "$r" --argjson cpu "$cpu_us" \
            '{side: $side, round: $round, concurrency: .runs[-1].concurrency,
              ops_per_s: .runs[-1].ops_per_s, cpu_us_per_request: $cpu,
              errors: .runs[-1].error_total, p50_us: .runs[-1].latency.p50_us,
              p99_us: .runs[-1].latency.p99_us}' "$out" >>"$json_out"
    fi
}

for r in $(seq "$rounds"); do
    for c in ${concurrencies//,/ }; do
        # Alternate who goes first, so neither side always follows the other.
        if ((r % 2)); then run_side A "$c" "$r"; run_side B "$c" "$r"; else run_side B "$c" "$r"; run_side A "$c" "$r"; fi
    done
done

echo
echo "A = $label_a ${a_args}"
echo "B = $label_b ${b_args}"
echo "$mode on ${runtime:-the default runtime}, pool $pool, $requests requests per run, $rounds interleaved rounds, medians:"
echo
printf '| %-11s | %-27s | %-7s | %-27s | %-7s | %-17s | %-17s |\n' \
    concurrency "req/s A -> B" "B/A" "CPU us/request A -> B" "B/A" "B faster (rounds)" "B less CPU (rounds)"
printf '| %s | %s | %s | %s | %s | %s | %s |\n' \
    ----------- --------------------------- ------- --------------------------- ------- ----------------- -----------------
for c in ${concurrencies//,/ }; do
    awk -v c="$c" '
        function median(v, n,    i, j, t) {
            for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        $1 == c && $2 == "A" { ra[$3] = $4; ca[$3] = $5; na++ }
        $1 == c && $2 == "B" { rb[$3] = $4; cb[$3] = $5; nb++ }
        END {
            n = 0
            for (r in ra) if (r in rb) {
                n++; va[n] = ra[r]; vb[n] = rb[r]; wa[n] = ca[r]; wb[n] = cb[r]
                faster += rb[r] > ra[r]; cheaper += cb[r] < ca[r]
            }
            if (n == 0) exit
            a = median(va, n); b = median(vb, n); x = median(wa, n); y = median(wb, n)
            printf "| %-11s | %12.0f -> %-11.0f | %6.3fx | %12.2f -> %-11.2f | %6.3fx | %8d of %-6d | %8d of %-6d |\n",
                c, a, b, b / a, x, y, (x > 0 ? y / x : 0), faster, n, cheaper, n
        }' "$results"
done
