#!/usr/bin/env bash
# The public API of every published crate, as cargo-public-api lists it (on the installed
# nightly's rustdoc JSON), committed in api/<crate>.txt. CI runs this script and fails when a
# listing changed unnoticed; after a deliberate change, run `api/check.sh --bless` and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
crates=(usageflow-socket-core usageflow-socket-client usageflow-socket-tokio usageflow-socket-smol usageflow-socket-server usageflow-tower)
version=0.52.0
if ! cargo public-api --version 2>/dev/null | grep -q "$version"; then
    cargo install --locked cargo-public-api --version "$version"
fi
status=0
for crate in "${crates[@]}"; do
    # -ss: without blanket and auto-trait impls, which only restate the types' shapes.
    listing=$(cargo public-api -p "$crate" -ss)
    if [ "${1:-}" = "--bless" ]; then
        printf '%s\n' "$listing" > "api/$crate.txt"
    elif ! diff -u "api/$crate.txt" <(printf '%s\n' "$listing"); then
        echo "!! the public API of $crate changed: review the diff above, then run api/check.sh --bless"
        status=1
    fi
done
exit $status
