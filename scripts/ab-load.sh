#!/usr/bin/env bash
# A/B of bqforward binaries on bench.sh's bigquery_load scenario (PackedForward + ack ->
# bigquery_load, file buffer, 64 MiB chunks, 4 flush threads, until the emulator's jobs have
# loaded every row): each binary in turn, ROUNDS times, on one emulator, a fresh buffer per
# run; one loadgen table row per run. Only ratios within a round mean much on a shared machine.
# Usage: scripts/ab-load.sh ROUNDS EVENTS BIN...   (after scripts/bench.sh: its configs and build)
#        BIN:idle   that binary's runs end when bqforward is idle, not when the rows are loaded
#                   (a build or config that loads nothing: docs/performance.md, "part by part")
#        GZIP=1 ...   the same with <buffer> compress gzip
#        PERF=1 ...   `perf record -g` of the first run into target/ab-load/perf.data
set -u
rounds=$1 events=$2; shift 2
rel=$PWD/target/release
d=$PWD/target/ab-load
rm -rf "$d"; mkdir -p "$d"
"$rel/bigquery-emulator" --port 0 --null-mode > "$d/emulator.log" 2>&1 & emu=$!
trap 'kill $emu 2>/dev/null' EXIT
sleep 1; port=$(grep -o '127.0.0.1:[0-9]*' "$d/emulator.log" | head -1)
curl -fsS -X POST "http://$port/bigquery/v2/projects/bench/datasets" \
  -d '{"datasetReference": {"datasetId": "logs"}}' > /dev/null
"$rel/bqforward-loadgen" --print-schema > "$d/schema.json"
fwd=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# bench.sh's own config for the scenario (it writes every config into target/bench-out before
# it runs anything), pointed at this emulator, port and buffer.
conf=$PWD/target/bench-out/bigquery-load.conf
[ "${GZIP:-}" = 1 ] && conf=$PWD/target/bench-out/bigquery-load-gzip.conf
if [ ! -f "$conf" ]; then
  echo "ab-load.sh: no $conf: run scripts/bench.sh first (BENCH_ONLY=load is enough)" >&2
  exit 1
fi
sed -e "s|endpoint http://[0-9.:]*|endpoint http://$port|" -e "s|^  port 0$|  port $fwd|" \
  -e "s|^    path .*|    path $d/buffer|" -e "s|schema_path .*|schema_path $d/schema.json|" \
  "$conf" > "$d/load.conf"
profile=${PERF:-}
for r in $(seq "$rounds"); do
  for spec in "$@"; do
    b=${spec%:idle} until=rows
    [ "$b" != "$spec" ] && until=idle
    rm -rf "$d/buffer"
    "$b" run -c "$d/load.conf" > "$d/bqforward.log" 2>&1 & pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$fwd") 2>/dev/null && break; sleep 0.1; done
    perf_pid=
    if [ "$profile" = 1 ]; then
      perf record -F 3999 -g -o "$d/perf.data" -p $pid 2> "$d/perf.log" & perf_pid=$!
      profile=
    fi
    "$rel/bqforward-loadgen" --port "$fwd" --pid $pid --emulator "http://$port" --events "$events" \
      --mode packed --ack --until "$until" --rows-counter rows_loaded --timeout 300 \
      --label "$spec, round $r" 2>> "$d/loadgen.log"
    [ -n "$perf_pid" ] && { kill -INT $perf_pid; wait $perf_pid; }
    kill -TERM $pid; wait $pid 2>/dev/null
  done
done
