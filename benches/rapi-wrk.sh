#!/usr/bin/env bash
# RAPI over HTTP(S) end to end with wrk (apt-get install wrk): reads, and durable job submission.
# Usage: bash benches/rapi-wrk.sh   (builds the release binary; results on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=target/release/gantry
work=$(mktemp -d)
printf 'admin admin write\n' > "$work/users"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic YWRtaW46YWRtaW4="
LUA
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
start() { # $1: data dir, rest: flags; the URL ends up in $1.out
  "$bin" serve --data-dir "$1" --port 0 --bind 127.0.0.1 --users "$work/users" \
    --queue-limit 10000000 "${@:2}" > "$1.out" 2>/dev/null &
  pids+=($!)
  until [ -s "$1.out" ]; do sleep 0.1; done
}
start "$work/a" --no-ssl
start "$work/b"
http=$(sed 's/.* //' "$work/a.out")
https=$(sed 's/.* //' "$work/b.out")
echo "GET /2/info, HTTP, 32 connections";  wrk -t2 -c32 -d5s "$http/2/info"  | grep -E "Latency|Requests/sec"
echo "GET /2/info, HTTPS, 32 connections"; wrk -t2 -c32 -d5s "$https/2/info" | grep -E "Latency|Requests/sec"
# Submission only: a PAUSE rule holds every job, so none runs while we measure.
curl -s -u admin:admin -H 'Content-Type: application/json' -X POST "$http/2/filters" -d '{"action": "PAUSE"}' >/dev/null
echo "POST /2/jobs (durable), HTTP, 32 connections"; wrk -t2 -c32 -d5s -s "$work/post.lua" "$http/2/jobs" | grep -E "Latency|Requests/sec|Non-2xx"
