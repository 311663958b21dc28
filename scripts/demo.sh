#!/usr/bin/env bash
# The demo: a realistic multi-sensor stream (firewall, endpoint, DNS, HTTP, TLS; skewed clocks,
# reversed directions, late records) goes through the whole loop on the embedded store:
# generate -> ingest -> run (network-session plugin) -> stories, then a summary.
# SESSIONS=N changes the size (default 50000 sessions, about 200000 events).
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=${SESSIONS:-50000}
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
cargo build --release --quiet -p storyline
cargo build --quiet --target wasm32-wasip2 --profile plugin -p network-session

bin=./target/release/storyline
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plugins/acme"
cp target/wasm32-wasip2/plugin/network_session.wasm "$work/plugins/acme/"
sl() { "$bin" --data-dir "$work/data" --plugin-dir "$work/plugins" "$@"; }

echo "== plugin"
sl plugin check "$work/plugins/acme/network_session.wasm" | sed -n '1,4p'

echo "== generate: $sessions sessions seen by firewall, endpoint, DNS, HTTP and TLS sensors"
sl generate --sessions "$sessions" > "$work/events.jsonl"
echo "$(wc -l < "$work/events.jsonl") events"

echo "== ingest"
sl ingest --tenant acme "$work/events.jsonl"

echo "== run (until caught up and idle)"
sl run --exit-when-idle --delay-ms 1000

echo "== status"
sl status --tenant acme

echo "== two stories"
sl stories --tenant acme > "$work/stories.jsonl"
python3 - "$work/stories.jsonl" <<'PY'
import json, sys
shown = 0
for line in open(sys.argv[1]):
    s = json.loads(line)
    if s["kind"] == "network-session" and s["fields"].get("dns") and shown < 2:
        print(json.dumps(s, indent=1))
        shown += 1
PY

echo "== summary"
python3 - "$work/events.jsonl" "$work/stories.jsonl" <<'PY'
import json, sys, collections
truth = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    truth[e["id"]] = e["attributes"]["gen.session"]
stories = [json.loads(l) for l in open(sys.argv[2])]
kinds = collections.Counter(s["kind"] for s in stories)
exact = sum(1 for s in stories if len({truth[i] for i in s["event_ids"]}) == 1)
sessions = len(set(truth.values()))
covered = sum(len(s["event_ids"]) for s in stories)
print(f"events in: {len(truth)}; stories out: {len(stories)} {dict(kinds)}")
print(f"sessions generated: {sessions}; stories made of one session: {exact}; events in stories: {covered}")
PY
