#!/usr/bin/env bash
# Fetches the public sensor logs the README's correlation-quality figures come from into
# ./quality-data/ (git-ignored: their licences are GPL or CC BY-SA, so they are not part of
# this repository), then runs the benchmark on them.
#
#   bash scripts/quality-data.sh            # fetch (once) and run
#
# Needs git and network access to github.com. Each data set is pinned to a commit.
set -euo pipefail
cd "$(dirname "$0")/.."
out=quality-data
mkdir -p "$out"

# repo commit path-in-repo target-dir
fetch() {
    local repo=$1 commit=$2 path=$3 dir=$4
    [ -e "$out/$dir/.done" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    git -C "$tmp" init -q
    git -C "$tmp" remote add origin "https://github.com/$repo"
    git -C "$tmp" config core.sparseCheckout true
    echo "$path" > "$tmp/.git/info/sparse-checkout"
    git -C "$tmp" fetch -q --depth 1 --filter=blob:none origin "$commit"
    git -C "$tmp" checkout -q FETCH_HEAD
    mkdir -p "$out/$dir"
    cp -r "$tmp/$path"/. "$out/$dir/"
    find "$out/$dir" -name '*.gz' -exec gunzip -f {} +
    echo "$repo@$commit:$path" > "$out/$dir/.done"
    rm -rf "$tmp"
}

# repo commit path-in-repo target-file
fetch_file() {
    local repo=$1 commit=$2 path=$3 file=$4
    [ -e "$out/$file" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    git -C "$tmp" init -q
    git -C "$tmp" remote add origin "https://github.com/$repo"
    git -C "$tmp" fetch -q --depth 1 --filter=blob:none origin "$commit"
    mkdir -p "$(dirname "$out/$file")"
    git -C "$tmp" show "FETCH_HEAD:$path" > "$out/$file"
    rm -rf "$tmp"
}

# Zeek TSV, 3 days of an internet-facing host (GPL-3.0).
fetch activecm/rita a3c51501a93af9ab0ebbed0f15f431bcf536ddf1 test_data/missing_host zeek-rita-missing-host
# Zeek TSV with labels, CTU-Normal-44 day 2 (GPL-2.0; cite Stratosphere Lab, CTU Prague).
fetch stratosphereips/security-datasets-for-testing 1c90a3692012ad7ee9c271241965da4e2799f957 012-zeek-mixed zeek-ctu-normal-44
# Zeek JSON of the WRCCDC 2018 competition network (CC BY-SA 4.0, Brim Data).
fetch brimdata/zed-sample-data 8da0758e1ee1a8f94895d640a7646fd2c27ca803 zeek-json zeek-wrccdc2018
# Suricata EVE of a mail server testbed (GPL-3.0, AIT).
fetch ait-aecid/logdata-anomaly-miner 26ff1889ffed38bcd83a20792120cdc9eab8bb67 aecid-testsuite/demo/aminerJsonInputDemo/json_logs suricata-ait-mailserver
# Suricata EVE of an exposed honeypot host (GPL-2.0, Stratosphere Lab): one file.
fetch_file stratosphereips/StratosphereLinuxIPS 12f4fd20559c11881ff292dca812eece3c4a6fc3 \
    dataset/test6-malicious.suricata.json suricata-ctu-test6/eve.json
cargo build --release -p storyline
cargo build --target wasm32-wasip2 --profile plugin -p network-session --target-dir target/plugins
./target/release/storyline --data-dir target/quality bench quality \
    --plugin target/plugins/wasm32-wasip2/plugin/network_session.wasm \
    --config '{"dns_joins_connection": false}' \
    "$out/zeek-rita-missing-host" "$out/zeek-ctu-normal-44/data" "$out/zeek-wrccdc2018" \
    "$out/suricata-ait-mailserver" "$out/suricata-ctu-test6"
