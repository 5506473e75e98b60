#!/usr/bin/env bash
# The main job, locally and without a Google account: build bqforward and the repo's
# bigquery-emulator, run bqforward on config/bigquery.conf against it, send events with real
# clients (fluent-logger in Message mode; PackedForward and CompressedPackedForward with acks,
# as fluentd / Fluent Bit out_forward send), and show the rows that landed in BigQuery and the
# one row BigQuery rejected, in the dead letters. Needs only cargo and python3.
# Usage: scripts/demo.sh        (DEMO_PORT=24224 to change the forward port)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import fluent, msgpack' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -r tests/clients/requirements.txt
fi
scripts/build-deps.sh
# The dev profile: the demo sends a few thousand events, and this build is the one
# scripts/test.sh reuses. For production, build with --release (fat LTO, several minutes more).
echo "== building bqforward and bigquery-emulator (dev profile; the first build compiles ~300 crates)"
cargo build --locked --workspace --bins
bin=target/debug

out=$PWD/demo-out
rm -rf "$out"
mkdir -p "$out"
port=${DEMO_PORT:-24224}
py=.venv/bin/python
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

echo "== starting bigquery-emulator (a local BigQuery REST API, data in demo-out/bigquery)"
coproc EMU { exec "$bin"/bigquery-emulator --port 0 --data-dir "$out/bigquery" 2> "$out/emulator.log"; }
pids+=("$EMU_PID")
read -r line <&"${EMU[0]}"
endpoint="http://${line##listening on }"
echo "   $endpoint"
$py scripts/bq.py "$endpoint" create-dataset demo logs

echo "== starting bqforward -c config/bigquery.conf on 127.0.0.1:$port"
BIGQUERY_ENDPOINT=$endpoint BIGQUERY_AUTH_METHOD=none BIGQUERY_PROJECT=demo \
BQFORWARD_BIND=127.0.0.1 BQFORWARD_PORT=$port BQFORWARD_CONFIG_DIR=$PWD/config \
BQFORWARD_DEAD_LETTER_DIR=$out/dead-letters \
  "$bin"/bqforward run -c config/bigquery.conf 2> "$out/bqforward.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q listening "$out/bqforward.log" && break
  sleep 0.1
done

echo "== sending: 5 events with fluent-logger (app.web), 2000 PackedForward + 2000 gzip CompressedPackedForward with acks (app.api, app.worker)"
$py tests/clients/fluent_logger_send.py --port "$port" --tag app --label web --count 5 --nanosecond
$py tests/clients/forward_send.py --port "$port" --mode packed --tag app.api --connections 2 --events 1000 --chunk 250 --ack
$py tests/clients/forward_send.py --port "$port" --mode compressed --tag app.worker --connections 2 --events 1000 --chunk 250 --ack
echo "== and one event BigQuery must reject (seq is not an integer)"
$py - "$port" <<'PY'
import sys
from fluent import sender
s = sender.FluentSender("app", host="127.0.0.1", port=int(sys.argv[1]))
assert s.emit("web", {"seq": "not a number", "msg": "bad row"}), s.last_error
s.close()
PY

$py scripts/bq.py "$endpoint" wait-rows demo logs 4005 30
kill -TERM "${pids[1]}"
wait "${pids[1]}" || true

echo "== rows in BigQuery (tabledata.list)"
$py scripts/bq.py "$endpoint" show demo logs
echo "== dead letters"
cat "$out"/dead-letters/*.log
echo "== bqforward log"
cat "$out/bqforward.log"
