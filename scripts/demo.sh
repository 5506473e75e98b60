#!/usr/bin/env bash
# The main job, locally: build bqforward, run it on config/demo.conf, send sample events with
# the real fluent-logger client (Message mode) and hand-built PackedForward frames with acks,
# then show what landed. Needs only cargo and python3.
# Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import fluent, msgpack' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -r tests/clients/requirements.txt
fi
cargo build --release --locked --bin bqforward

out=demo-out
rm -rf "$out"
mkdir -p "$out"
port=${DEMO_PORT:-24224}
sed -e "s|@DEMO_OUT@|$PWD/$out|" -e "s|port 24224|port $port|" config/demo.conf > "$out/fluent.conf"
target/release/bqforward run -c "$out/fluent.conf" 2> "$out/bqforward.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  grep -q listening "$out/bqforward.log" && break
  sleep 0.1
done

echo "== sending 5 events with fluent-logger (Message mode, EventTime)"
.venv/bin/python tests/clients/fluent_logger_send.py --port "$port" --tag demo --label app --count 5 --nanosecond
echo "== sending 2 x 1000 events as PackedForward and CompressedPackedForward with acks"
.venv/bin/python tests/clients/forward_send.py --port "$port" --mode packed --tag demo.packed --events 1000 --chunk 500 --ack
.venv/bin/python tests/clients/forward_send.py --port "$port" --mode compressed --tag demo.gzip --events 1000 --chunk 500 --ack

kill -TERM $pid
wait $pid
trap - EXIT
echo "== bqforward log"
cat "$out/bqforward.log"
echo "== files written"
find "$out/logs" -type f | sort | while read -r f; do
  printf '%s: %s lines\n' "$f" "$(wc -l < "$f")"
done
echo "== first lines of each"
find "$out/logs" -type f | sort | while read -r f; do head -n 2 "$f"; done
