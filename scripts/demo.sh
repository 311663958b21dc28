#!/usr/bin/env bash
# The demo: build the host and the network-session plugin, check the plugin, and run it over
# the bundled multi-sensor sample. Stories go to stdout as JSONL, the summary to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
cargo build --release --quiet -p storyline
cargo build --quiet --target wasm32-wasip2 --profile plugin -p network-session

bin=./target/release/storyline
plugin=target/wasm32-wasip2/plugin/network_session.wasm
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

echo "== storyline plugin check $plugin"
"$bin" --data-dir "$data" plugin check "$plugin"
echo
echo "== storyline plugin test $plugin --events plugins/network-session/sample/events.jsonl --latest"
"$bin" --data-dir "$data" plugin test "$plugin" \
    --events plugins/network-session/sample/events.jsonl --latest
