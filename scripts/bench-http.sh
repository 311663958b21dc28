#!/usr/bin/env bash
# Ingest throughput of the HTTP API against `storyline ingest` of the same file, alternating:
# a running host (workers idle: a read delay of an hour) routing with network-session takes the
# file once through `storyline ingest` (its socket) and once as one `curl --data-binary` POST,
# each into a fresh data directory. Needs curl. SESSIONS=N changes the size (default 250000
# sessions, about 1,000,000 events), ROUNDS=N the rounds (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=${SESSIONS:-250000}
rounds=${ROUNDS:-3}
port=${PORT:-18080}
cargo build --release --quiet -p storyline
cargo build --quiet --target wasm32-wasip2 --profile plugin -p network-session
bin=$PWD/target/release/storyline
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
mkdir -p plugins/acme
cp "$OLDPWD/target/wasm32-wasip2/plugin/network_session.wasm" plugins/acme/
"$bin" generate --sessions "$sessions" > events.jsonl 2>/dev/null
events=$(wc -l < events.jsonl)
token=bench-token
printf '[http]\nmax_body_bytes = %d\n[tenants.acme]\ntokens = ["%s"]\n' \
  $(( $(stat -c %s events.jsonl) + 1000000 )) "$("$bin" config hash-token "$token")" > storyline.toml
sl() { "$bin" --config-file storyline.toml --data-dir data --plugin-dir plugins "$@"; }
echo "$events events ($(( $(stat -c %s events.jsonl) / 1000000 )) MB)"
for round in $(seq 1 "$rounds"); do
  for way in ingest http; do
    rm -rf data
    # The binary itself in the background (not the `sl` function, whose subshell a kill would
    # leave the server running behind).
    "$bin" --config-file storyline.toml --data-dir data --plugin-dir plugins \
      run --http-addr "127.0.0.1:$port" --delay-ms 3600000 2> run.log &
    pid=$!
    until curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" | grep -q 200; do
      sleep 0.2
    done
    start=$(date +%s.%N)
    if [ "$way" = ingest ]; then
      sl ingest --tenant acme events.jsonl > /dev/null 2> ingest.log
    else
      curl -sS --fail --data-binary @events.jsonl -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$port/v1/tenants/acme/events" > answer.json
    fi
    end=$(date +%s.%N)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    awk -v s="$start" -v e="$end" -v n="$events" -v r="$round" -v w="$way" \
      'BEGIN { printf "round %d %-6s %6.2f s  %7.0f events/s\n", r, w, e - s, n / (e - s) }'
  done
done
