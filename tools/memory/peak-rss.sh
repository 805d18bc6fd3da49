#!/usr/bin/env bash
# Peak RSS per image size of `flux generate` (1 step), and idle RSS of `flux serve` after large
# requests: the measurements behind docs/memory.md and flux-core's memory estimate.
#
#   tools/memory/peak-rss.sh [FLUX_BINARY] [--model DIR]   # default: target/release/flux, bundled model
#
# Needs GNU time (/usr/bin/time -v) and curl. Prints one line per case.
set -euo pipefail
BIN=${1:-target/release/flux}
shift || true
MODEL_ARGS=("$@")
PORT=${PORT:-18391}

for spec in "512 1" "1024 1" "1280 1" "2048 1" "2048 4"; do
  read -r side images <<<"$spec"
  out=$(mktemp -d)
  log=$(mktemp)
  rc=0
  /usr/bin/time -v -o "$log" "$BIN" generate x --steps 1 --size "${side}x${side}" -n "$images" \
    -o "$out" "${MODEL_ARGS[@]}" >/dev/null 2>&1 || rc=$?
  peak=$(awk '/Maximum resident/ {print int($NF / 1024)}' "$log")
  wall=$(awk '/Elapsed \(wall/ {print $NF}' "$log")
  echo "generate ${side}x${side} x${images}: exit ${rc}, peak RSS ${peak} MiB, wall ${wall}"
  rm -rf "$out" "$log"
done

"$BIN" serve --allow-unauthenticated --listen "127.0.0.1:$PORT" --files-dir "$(mktemp -d)" \
  "${MODEL_ARGS[@]}" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 1; done
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status"; }
request() {
  curl -s -o /dev/null -w '%{http_code} %{time_total}s' "http://127.0.0.1:$PORT/api/v1/flux/dev" \
    -H 'Content-Type: application/json' \
    -d "{\"prompt\":\"x\",\"num_inference_steps\":1,\"image_size\":{\"width\":$1,\"height\":$1}}"
}
echo "serve: idle RSS after load $(rss) MiB"
for side in 512 1024 1024 2048 512; do
  answer=$(request "$side")
  sleep 1
  echo "serve: ${side}² -> ${answer}, idle RSS after it $(rss) MiB"
done
