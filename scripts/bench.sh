#!/usr/bin/env bash
# The end-to-end load benchmark in one command: builds bqforward, bigquery-emulator and
# bqforward-loadgen in release mode, starts the emulator in --null-mode (accepts gzip insertAll
# bodies, stores nothing, answers success) and, per scenario, a fresh bqforward on 127.0.0.1;
# drives it with the load generator and prints a Markdown table: events/s, MB/s on the wire,
# bqforward's CPU seconds per million events (/proc/PID/stat), peak RSS (VmHWM) and ack
# latency p50/p90/p99. With FLUENT_BIT_BIN set, Fluent Bit's forward input -> null and -> http
# (json + gzip, to the same emulator) take the same load in the same run.
# Usage: scripts/bench.sh            BENCH_EVENTS=5000000 BENCH_CONNECTIONS=4 to change the load
#        (Fluent Bit takes BENCH_FLUENT_BIT_EVENTS, default 1000000: it holds everything it has
#        acked in memory until its slower http output catches up)
#        BENCH_REPEAT=5 to run the PackedForward scenarios 5 times (default 3): -> null with and
#        without filters, -> bigquery_insert tuned, with filters and as users write it (these
#        three take turns), and tuned with --threads 1; the last lines give the medians and the
#        ratios the targets are set in
#        BENCH_ONLY=filters scripts/bench.sh   only those scenarios, without --threads 1
#        (the as-users-write-it runs take BENCH_USERS_EVENTS, default 2000000: see below)
#        BENCH_PROFILE=1 scripts/bench.sh   also records `perf` samples of the first tuned
#        PackedForward -> bigquery_insert run (BENCH_PROFILE=filters, users, null-filters: of
#        that scenario's first run)
#        BENCH_SOAK_SECONDS=600 scripts/bench.sh   only the 10-minute overload soak (RSS over time)
#        BENCH_ONLY=storage scripts/bench.sh   only bigquery_insert against bigquery_storage_write
#        (memory buffer, file buffer, exactly_once), taking turns; the emulator serves gRPC on --grpc-port too
#        (BENCH_STORAGE_KINDS="storage storage-file" runs only those of insert storage storage-file
#        storage-once, and insert-file: bigquery_insert with a file buffer, not run by default;
#        BENCH_PROFILE=storage-file records `perf` samples of that kind's first run)
#        BENCH_ONLY=load scripts/bench.sh   only PackedForward + ack -> bigquery_load with a file
#        buffer, until the emulator's load jobs loaded every row (BENCH_LOAD_EVENTS, default
#        1000000: the emulator stores loaded rows, null mode is for insertAll only); plain
#        NDJSON (the default) and `<buffer> compress gzip` take turns BENCH_REPEAT times
#        (BENCH_PROFILE=load: `perf` samples of the first plain run)
set -euo pipefail
cd "$(dirname "$0")/.."

events=${BENCH_EVENTS:-5000000}
conns=${BENCH_CONNECTIONS:-4}
fluent_bit=${FLUENT_BIT_BIN:-}
fluent_bit_events=${BENCH_FLUENT_BIT_EVENTS:-1000000}
out=$PWD/target/bench-out
rm -rf "$out"
mkdir -p "$out"

scripts/build-deps.sh
cargo build --release --locked -p bqforward -p bigquery-emulator -p bqforward-loadgen >&2
bin=$PWD/target/release

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

coproc EMU { exec "$bin/bigquery-emulator" --port 0 --grpc-port 0 --null-mode 2> "$out/emulator.log"; }
pids+=("$EMU_PID")
read -r line <&"${EMU[0]}"
emulator="http://${line##listening on }"
read -r line <&"${EMU[0]}"
grpc="http://${line##grpc listening on }"

"$bin/bqforward-loadgen" --print-schema > "$out/schema.json"
cat > "$out/null.conf" <<EOF
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match **>
  @type null
</match>
EOF
cat > "$out/bigquery.conf" <<EOF
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_insert
  auth_method none
  endpoint $emulator
  project bench
  dataset logs
  table \${tag[1]}_%Y%m%d
  schema_path $out/schema.json
  <inject>
    time_key time
    tag_key tag
  </inject>
  <buffer>
    flush_interval 1s
    chunk_limit_records 500
    flush_thread_count 4
    total_limit_size 64m
    overflow_action block
    timekey_use_utc true
  </buffer>
</match>
EOF
# The Storage Write API (issue 19): the same output through bigquery_storage_write's default
# stream (gRPC, h2c to the emulator), with chunks of 2,000 events (~600 kB per AppendRows
# request: peak RSS near insertAll's; larger chunks cost less CPU per row and help the file
# buffer most, docs/performance.md "Storage Write API"); and with a file buffer.
sed -e "s|@type bigquery_insert|@type bigquery_storage_write\n  storage_endpoint $grpc|" \
  -e "s|chunk_limit_records 500|chunk_limit_records 2000|" "$out/bigquery.conf" > "$out/storage.conf"
sed "s|^  <buffer>|  <buffer>\n    @type file\n    path $out/storage-file-buffer|" "$out/storage.conf" \
  > "$out/storage-file.conf"
# exactly_once: committed streams (CreateWriteStream needs the table: auto_create_table makes
# it), a ticket per append beside the chunk, one append at a time per table.
sed "s|^  storage_endpoint|  exactly_once true\n  auto_create_table true\n  storage_endpoint|" \
  "$out/storage-file.conf" > "$out/storage-once.conf"
# The same with a file buffer (chunks appended to files under the buffer path before the ack).
sed "s|^  <buffer>|  <buffer>\n    @type file\n    path $out/file-buffer|" "$out/bigquery.conf" \
  > "$out/bigquery-file.conf"
# A typical aggregator's filters (issue 17): a field added from the host and the tag, debug
# lines dropped (the load has none, so every row still reaches the emulator), before null and
# before bigquery_insert (its schema with the new `hostname` column).
cat > "$out/filters.conf" <<'EOF'
<filter app.**>
  @type record_transformer
  <record>
    hostname "#{Socket.gethostname}"
    tag ${tag}
  </record>
</filter>
<filter app.**>
  @type grep
  <exclude>
    key level
    pattern /^debug$/
  </exclude>
</filter>
EOF
jq '. + [{"name": "hostname", "type": "STRING"}]' "$out/schema.json" > "$out/schema-filters.json"
sed "/^<match/e cat $out/filters.conf" "$out/null.conf" > "$out/null-filters.conf"
sed -e "/^<match/e cat $out/filters.conf" -e "s|$out/schema.json|$out/schema-filters.json|" \
  "$out/bigquery.conf" > "$out/bigquery-filters.conf"
# bigquery_insert as fluent-plugin-bigquery's README writes it: the schema fetched from the
# table, the time injected as a formatted string, the plugin's default <buffer> (one flush
# thread, total_limit_size 1g, throw_exception).
cat > "$out/bigquery-users.conf" <<EOF
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_insert
  auth_method none
  endpoint $emulator
  project bench
  dataset logs
  table access_log
  fetch_schema true
  <inject>
    time_key time
    time_type string
    time_format %Y-%m-%dT%H:%M:%S.%NZ
    tag_key tag
  </inject>
</match>
EOF
# bigquery_load (issue 20) with a file buffer: the plugin's parameters, flushed every second
# (the plugin's 3600 s would hold the run for an hour) in chunks of up to 64 MiB, each one
# load job into a table the job creates.
cat > "$out/bigquery-load.conf" <<EOF
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_load
  auth_method none
  endpoint $emulator
  project bench
  dataset logs
  table load_\${tag[1]}_%Y%m%d
  schema_path $out/schema.json
  auto_create_table true
  wait_job_interval 0.2
  <inject>
    time_key time
    tag_key tag
  </inject>
  <buffer>
    @type file
    path $out/load-buffer
    flush_interval 1s
    chunk_limit_size 64m
    flush_thread_count 4
    total_limit_size 1g
    overflow_action block
    timekey_use_utc true
  </buffer>
</match>
EOF
# The same with `<buffer> compress gzip`: the upload gzipped (level 1), into its own tables.
sed -e 's|^    path .*load-buffer$|&-gzip\n    compress gzip|' -e 's|table load_|table load_gz_|' \
  "$out/bigquery-load.conf" > "$out/bigquery-load-gzip.conf"
api=$emulator/bigquery/v2/projects/bench
curl -fsS -X POST "$api/datasets" -d '{"datasetReference": {"datasetId": "logs"}}' > /dev/null
jq '{tableReference: {tableId: "access_log"}, schema: {fields: .}}' "$out/schema.json" \
  | curl -fsS -X POST "$api/datasets/logs/tables" -d @- > /dev/null

# Starts bqforward on CONFIG (with any further ARGS); sets $server_pid and $server_port.
start_bqforward() {
  local log=$out/bqforward-$1.log
  : > "$log"
  "$bin/bqforward" run -c "$out/$2" "${@:3}" 2> "$log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do
    server_port=$(sed -n 's/.*listening.*addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n1)
    [ -n "$server_port" ] && return
    sleep 0.1
  done
  echo "bqforward did not start: $(cat "$log")" >&2
  exit 1
}

# Starts Fluent Bit with a forward input and OUTPUT (null | http); sets the same variables.
start_fluent_bit() {
  server_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local conf=$out/fluent-bit-$1.conf
  cat > "$conf" <<EOF
[SERVICE]
    Flush     1
    Log_Level warn
[INPUT]
    Name   forward
    Listen 127.0.0.1
    Port   $server_port
[OUTPUT]
    Name  $2
    Match *
EOF
  if [ "$2" = http ]; then
    cat >> "$conf" <<EOF
    Host        127.0.0.1
    Port        ${emulator##*:}
    URI         /bigquery/v2/projects/bench/datasets/logs/tables/fluentbit/insertAll
    Format      json
    Compress    gzip
    Retry_Limit no_retries
EOF
  fi
  "$fluent_bit" -c "$conf" > "$out/fluent-bit-$1.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$server_port") 2>/dev/null && return
    sleep 0.1
  done
  echo "fluent-bit did not start: $(cat "$out/fluent-bit-$1.log")" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

# load LABEL LOADGEN-ARGS...: one scenario against the running server, one table row.
load() {
  local label=$1
  shift
  "$bin/bqforward-loadgen" --port "$server_port" --pid "$server_pid" --emulator "$emulator" \
    --connections "$conns" --events "$events" --label "$label" "$@" 2>> "$out/loadgen.log" \
    | tee -a "$out/table.md"
}

# med ROWS COLUMN: the median of one column of table rows (over $repeats runs); line ROWS:
# M events per CPU-s / events per s / peak RSS, each column's median on its own.
med() {
  awk -F'|' -v c="$2" 'NF > 5 {gsub(/[ k]/, "", $c); print $c}' <<< "$1" | sort -n \
    | sed -n "$(( (repeats + 1) / 2 ))p"
}
line() { echo "$(med "$1" 7) / $(med "$1" 4)k / $(med "$1" 8)"; }

# BENCH_SOAK_SECONDS=600: only the overload soak. PackedForward with acks as fast as bqforward
# takes it, so its 64 MiB buffer stays full and `overflow_action block` holds the senders; its
# RSS (VmRSS) is sampled every 10 s and the run ends with the usual row plus the samples.
if [ -n "${BENCH_SOAK_SECONDS:-}" ]; then
  start_bqforward soak bigquery.conf
  (
    while kill -0 "$server_pid" 2> /dev/null; do
      echo "$(date +%s) $(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$server_pid/status" 2> /dev/null)"
      sleep 10
    done
  ) > "$out/soak-rss.txt" &
  pids+=("$!")
  load "bqforward: PackedForward + ack, ${BENCH_SOAK_SECONDS} s of overload (block)" --mode packed --ack \
    --events 1000000000 --duration "$BENCH_SOAK_SECONDS" --timeout 120
  stop_server
  echo
  echo "RSS MiB every 10 s ($out/soak-rss.txt):"
  awk 'NF == 2 { printf "%s ", $2; if (NR > 3) { if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2 } }
       END { print ""; print "after the first 30 s: min " min ", max " max " MiB" }' "$out/soak-rss.txt"
  exit 0
fi

{
  echo "Load: $events events of ~300 B (11 fields) per scenario, $conns connections, 500 events per chunk; $(nproc) CPUs; $(uptime | sed 's/.*load/load/')"
  echo
  echo "| scenario | events | events/s | MB/s (wire) | server CPU s / M events | M events / CPU-s | peak RSS MiB | ack p50 / p90 / p99 ms | load 1m |"
  echo "|---|---|---|---|---|---|---|---|---|"
} | tee "$out/table.md"

# BENCH_ONLY=storage: PackedForward + ack over the connections -> bigquery_insert (tuned),
# -> bigquery_storage_write, and -> bigquery_storage_write with a file buffer, taking turns
# BENCH_REPEAT times; then the medians and their ratios.
if [ "${BENCH_ONLY:-}" = storage ]; then
  repeats=${BENCH_REPEAT:-3}
  rows_insert= rows_insert_file= rows_storage= rows_storage_file= rows_storage_once=
  for run in $(seq "$repeats"); do
    for kind in ${BENCH_STORAGE_KINDS:-insert storage storage-file storage-once}; do
      conf=bigquery.conf label="bigquery_insert (gzip)"
      [ "$kind" = insert-file ] && conf=bigquery-file.conf label="bigquery_insert (gzip), file buffer"
      [ "$kind" = storage ] && conf=storage.conf label="bigquery_storage_write (default stream)"
      [ "$kind" = storage-file ] && conf=storage-file.conf label="bigquery_storage_write, file buffer"
      [ "$kind" = storage-once ] && conf=storage-once.conf label="bigquery_storage_write, exactly_once (file buffer)"
      start_bqforward "packed-$kind-$run" "$conf"
      perf_pid=
      if [ "${BENCH_PROFILE:-}" = "$kind" ] && [ "$run" = 1 ]; then
        perf record -F 499 --call-graph dwarf,16384 -o "$out/perf.data" -p "$server_pid" \
          2> "$out/perf.log" &
        perf_pid=$!
      fi
      row=$(load "bqforward: PackedForward + ack -> $label, run $run/$repeats" --mode packed --ack --until rows)
      echo "$row"
      [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
      stop_server
      case $kind in
        insert) rows_insert+="$row"$'\n' ;;
        insert-file) rows_insert_file+="$row"$'\n' ;;
        storage) rows_storage+="$row"$'\n' ;;
        storage-file) rows_storage_file+="$row"$'\n' ;;
        storage-once) rows_storage_once+="$row"$'\n' ;;
      esac
    done
  done
  {
    echo
    echo "Medians of $repeats runs, each column on its own (M events per CPU-s / events per s / peak RSS MiB):"
    echo "  bigquery_insert:                     $(line "$rows_insert")"
    [ -n "$rows_insert_file" ] && echo "  bigquery_insert, file buffer:        $(line "$rows_insert_file")"
    echo "  bigquery_storage_write:              $(line "$rows_storage") (target >= 1.5 M events per CPU-s)"
    echo "  bigquery_storage_write, file buffer: $(line "$rows_storage_file")"
    echo "  ... exactly_once (file buffer):      $(line "$rows_storage_once")"
    awk -v a="$(med "$rows_storage" 7)" -v b="$(med "$rows_insert" 7)" \
      -v f="$(med "$rows_storage_file" 4)" -v m="$(med "$rows_storage" 4)" \
      'BEGIN { printf "  storage write / insertAll per CPU-s: %.2f x; file / memory buffer events/s: %.2f x (target >= 0.8)\n", (b > 0 ? a / b : 0), (m > 0 ? f / m : 0) }'
    echo "  file / memory buffer events/s, run by run: $(paste -d' ' \
      <(awk -F'|' 'NF > 5 {gsub(/[ k]/, "", $4); print $4}' <<< "$rows_storage_file") \
      <(awk -F'|' 'NF > 5 {gsub(/[ k]/, "", $4); print $4}' <<< "$rows_storage") \
      | awk '$2 > 0 {printf "%s%.2f", (NR > 1 ? " " : ""), $1 / $2}')"
  } | tee -a "$out/table.md"
  if [ -f "$out/perf.data" ]; then
    echo "Profile of the first $BENCH_PROFILE run ($out/perf.data), self time:"
    { perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2> /dev/null \
      | grep '%' | head -n 30 | sed 's/[[:space:]-]*$//'; } || true
  fi
  exit 0
fi

load_events=${BENCH_LOAD_EVENTS:-$((events < 1000000 ? events : 1000000))}
# run_load CONFIG LABEL: one load-job run on a fresh bqforward; sets $row. BENCH_PROFILE=load
# records `perf` samples of the first run.
run_load() {
  local perf_pid=
  start_bqforward "packed-load-$1" "$1"
  if [ "${BENCH_PROFILE:-}" = load ] && [ ! -e "$out/perf.data" ]; then
    perf record -F 499 --call-graph dwarf,16384 -o "$out/perf.data" -p "$server_pid" \
      2> "$out/perf.log" &
    perf_pid=$!
  fi
  row=$(load "bqforward: PackedForward + ack -> bigquery_load, file buffer (64 MiB jobs)$2" \
    --mode packed --ack --until rows --rows-counter rows_loaded --events "$load_events")
  echo "$row"
  [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  stop_server
}
if [ "${BENCH_ONLY:-}" = load ]; then
  # The plugin's upload (plain NDJSON) and `<buffer> compress gzip` take turns, BENCH_REPEAT
  # times (default 3); then the medians.
  repeats=${BENCH_REPEAT:-3}
  rows_plain= rows_gzip=
  for run in $(seq "$repeats"); do
    run_load bigquery-load.conf ", plain NDJSON, run $run/$repeats"
    rows_plain+="$row"$'\n'
    run_load bigquery-load-gzip.conf ", compress gzip, run $run/$repeats"
    rows_gzip+="$row"$'\n'
  done
  {
    echo
    echo "Medians of $repeats runs, each column on its own (M events per CPU-s / events per s / peak RSS MiB):"
    echo "  bigquery_load, plain NDJSON:   $(line "$rows_plain") (target >= 2 M events per CPU-s)"
    echo "  bigquery_load, compress gzip:  $(line "$rows_gzip")"
  } | tee -a "$out/table.md"
  if [ "${BENCH_PROFILE:-}" = load ]; then
    echo "Profile of the first plain run ($out/perf.data), self time:"
    { perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2> /dev/null \
      | grep '%' | head -n 25 | sed 's/[[:space:]-]*$//'; } || true
  fi
  echo "Table in $out/table.md; details in $out/loadgen.log, server logs in $out/."
  exit 0
fi

# BENCH_ONLY=filters: only the scenarios of issue 17 (PackedForward -> null with and without
# the filters; -> bigquery_insert tuned, with the filters, and as users write it).
full=1
[ "${BENCH_ONLY:-}" = filters ] && full=

if [ -n "$full" ]; then
  start_bqforward message-null null.conf
  load "bqforward: Message -> null" --mode message
  stop_server
fi

# The headline scenarios run BENCH_REPEAT times (default 3), each on a fresh bqforward: this
# kind of VM drifts by 10-20 % over minutes, so one run says little. The median is reported.
# Scenarios compared with each other take turns within each repeat (A B C A B C ...).
# The main one runs with the default threads (one per CPU) and with `--threads 1`: the
# generator and the emulator share the CPUs, as an application shares them with a sidecar.
repeats=${BENCH_REPEAT:-3}
# median_row ROWS: the median row by CPU per event.
median_row() {
  awk -F'|' 'NF > 5 {print $6 "|" $0}' <<< "$1" | sort -n \
    | sed -n "$(( (repeats + 1) / 2 ))p" | cut -d'|' -f2-
}
# run_once NAME CONFIG LABEL LOADGEN-ARGS... [-- BQFORWARD-ARGS...]: one scenario on a fresh
# bqforward; sets $row. BENCH_PROFILE=1 records `perf` samples of the first tuned
# bigquery_insert run (BENCH_PROFILE=filters / users / null-filters: of that scenario's).
run_once() {
  local name=$1 conf=$2 label=$3 loadargs=() perf_pid=
  shift 3
  while [ $# -gt 0 ] && [ "$1" != -- ]; do loadargs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  start_bqforward "$name" "$conf" "$@"
  case "${BENCH_PROFILE:-}:$name" in
    1:packed-bq-1 | filters:packed-bq-filters-1 | users:packed-bq-users-1 | null-filters:packed-null-filters-1)
      perf record -F 499 --call-graph dwarf,16384 -o "$out/perf.data" -p "$server_pid" \
        2> "$out/perf.log" &
      perf_pid=$! ;;
  esac
  row=$(load "$label" "${loadargs[@]}")
  echo "$row"
  [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  stop_server
}

rows_null= rows_null_filters=
for run in $(seq "$repeats"); do
  run_once "packed-null-$run" null.conf \
    "bqforward: PackedForward + ack -> null, run $run/$repeats" --mode packed --ack
  rows_null+="$row"$'\n'
  run_once "packed-null-filters-$run" null-filters.conf \
    "bqforward: PackedForward + ack -> record_transformer + grep -> null, run $run/$repeats" \
    --mode packed --ack
  rows_null_filters+="$row"$'\n'
done

bq="--mode packed --ack --until rows"
# As users write it, the buffer keeps the plugin's total_limit_size 1g and throw_exception:
# one flush thread falls behind the load, and past ~2.5 million buffered events of this size
# the buffer refuses chunks (no ack; a real sender resends, the load generator stops). So
# those runs take BENCH_USERS_EVENTS (default 2000000); events per CPU-second compare.
users_events=${BENCH_USERS_EVENTS:-$((events < 2000000 ? events : 2000000))}
rows_tuned= rows_filters= rows_users=
tuned() {
  # shellcheck disable=SC2086 # $bq is a list of arguments
  run_once "packed-bq-$run" bigquery.conf \
    "bqforward: PackedForward + ack -> bigquery_insert (gzip), run $run/$repeats" $bq
  rows_tuned+="$row"$'\n'
}
filtered() {
  # shellcheck disable=SC2086
  run_once "packed-bq-filters-$run" bigquery-filters.conf \
    "bqforward: PackedForward + ack -> record_transformer + grep -> bigquery_insert, run $run/$repeats" $bq
  rows_filters+="$row"$'\n'
}
users() {
  # shellcheck disable=SC2086
  run_once "packed-bq-users-$run" bigquery-users.conf \
    "bqforward: PackedForward + ack -> bigquery_insert as users write it (fetch_schema, time_format %N, default <buffer>), run $run/$repeats" \
    $bq --events "$users_events"
  rows_users+="$row"$'\n'
}
# The machine drifts within a set (other work comes and goes): every other round runs the
# three the other way round, so that a steady drift costs each the same in a pair of rounds.
for run in $(seq "$repeats"); do
  if ((run % 2)); then tuned; filtered; users; else users; filtered; tuned; fi
done
median_default=$(median_row "$rows_tuned")

if [ -n "$full" ]; then
  rows_one=
  for run in $(seq "$repeats"); do
    # shellcheck disable=SC2086
    run_once "packed-bq-threads1-$run" bigquery.conf \
      "bqforward --threads 1: PackedForward + ack -> bigquery_insert (gzip), run $run/$repeats" \
      $bq -- --threads 1
    rows_one+="$row"$'\n'
  done
  median_one=$(median_row "$rows_one")
  # The default's median rate sets the half-rate scenario.
  max=$(awk -F'|' '{gsub(/[ k]/, "", $4); print $4 * 1000}' <<< "$median_default")

  start_bqforward packed-bq-half bigquery.conf
  load "bqforward: PackedForward + ack at half rate ($((max / 2000)) k/s) -> bigquery_insert" \
    --mode packed --ack --until rows --rate $((max / 2))
  stop_server

# With a file buffer: the maximum rate, then half of it (the ack-latency target's setting).
  start_bqforward packed-bq-file bigquery-file.conf
  row=$(load "bqforward: PackedForward + ack -> bigquery_insert, file buffer" \
    --mode packed --ack --until rows)
  echo "$row"
  stop_server
  max_file=$(awk -F'|' '{gsub(/[ k]/, "", $4); print $4 * 1000}' <<< "$row")
  start_bqforward packed-bq-file-half bigquery-file.conf
  load "bqforward: PackedForward + ack at half rate ($((max_file / 2000)) k/s) -> bigquery_insert, file buffer" \
    --mode packed --ack --until rows --rate $((max_file / 2))
  stop_server

  run_load bigquery-load.conf ", plain NDJSON"

  for mode in forward compressed; do
    start_bqforward "$mode-bq" bigquery.conf
    load "bqforward: $mode + ack -> bigquery_insert" --mode "$mode" --ack --until rows
    stop_server
  done
  start_bqforward message-bq bigquery.conf
  load "bqforward: Message -> bigquery_insert" --mode message --until rows
  stop_server

  if [ -n "$fluent_bit" ]; then
    start_fluent_bit message-null null
    load "fluent-bit: Message -> null" --mode message --until idle --events "$fluent_bit_events"
    stop_server
    start_fluent_bit packed-http http
    load "fluent-bit: PackedForward + ack -> http json+gzip" --mode packed --ack --until idle \
      --events "$fluent_bit_events"
    stop_server
  fi
fi

if [ -n "${BENCH_PROFILE:-}" ]; then
  echo
  echo "Profile of the first run of the profiled scenario ($out/perf.data), self time:"
  { perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2> /dev/null \
    | grep '%' | head -n 15 | sed 's/[[:space:]-]*$//'; } || true
  echo "inclusive:"
  { perf report -i "$out/perf.data" --children --sort symbol --stdio -g none 2> /dev/null \
    | grep -E 'RequestBuilder::build|rows::write_row$|request::finish|input::forward::.*run' \
    | head -n 6 | sed 's/[[:space:]-]*$//'; } || true
fi
echo
per_event() {
  awk -F'|' '{gsub(/ /, "", $6); gsub(/ /, "", $7); print $6 " CPU s per M events, " $7 " M events per CPU-s"}' <<< "$1"
}
# M events per CPU-second of a row, and the ratios of two sets of interleaved runs: of their
# medians, and run by run.
rate() { awk -F'|' '{gsub(/ /, "", $7); print $7}' <<< "$1"; }
ratio() { awk -v a="$(rate "$1")" -v b="$(rate "$2")" 'BEGIN { printf "%.2f", a / b }'; }
paired() {
  paste -d'|' <(awk -F'|' 'NF > 5 {gsub(/ /, "", $6); print $6}' <<< "$1") \
    <(awk -F'|' 'NF > 5 {gsub(/ /, "", $6); print $6}' <<< "$2") \
    | awk -F'|' '{printf "%s%.2f", (NR > 1 ? " " : ""), $2 / $1}'
}
# The median of those run-by-run ratios (each from runs next to each other).
paired_median() {
  tr ' ' '\n' <<< "$(paired "$1" "$2")" | sort -n | awk '{v[NR] = $1} END {
    printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
rss() { awk -F'|' '{gsub(/ /, "", $8); print $8}' <<< "$1"; }
# The same ratio of the medians' events/s (wall time, until the emulator had every row).
wall_ratio() {
  awk -v a="$(awk -F'|' '{gsub(/[ k]/, "", $4); print $4}' <<< "$1")" \
    -v b="$(awk -F'|' '{gsub(/[ k]/, "", $4); print $4}' <<< "$2")" 'BEGIN { printf "%.2f", a / b }'
}
median_null=$(median_row "$rows_null")
median_null_filters=$(median_row "$rows_null_filters")
median_filters=$(median_row "$rows_filters")
median_users=$(median_row "$rows_users")
{
  echo "PackedForward + ack -> bigquery_insert, median of $repeats runs: $(per_event "$median_default")"
  [ -n "$full" ] && echo "The same with --threads 1, median of $repeats runs: $(per_event "$median_one")"
  echo "PackedForward + ack -> record_transformer + grep -> null, median of $repeats runs: $(per_event "$median_null_filters") (target >= 3 M); without the filters $(rate "$median_null") M"
  echo "PackedForward + ack -> record_transformer + grep -> bigquery_insert, median of $repeats runs: $(per_event "$median_filters"); $(ratio "$median_filters" "$median_default") x the unfiltered median's events per CPU-s (target >= 0.9; run by run: $(paired "$rows_filters" "$rows_tuned"), their median $(paired_median "$rows_filters" "$rows_tuned")), $(wall_ratio "$median_filters" "$median_default") x its events/s"
  echo "bigquery_insert as users write it, median of $repeats runs: $(per_event "$median_users"), peak RSS $(rss "$median_users") MiB; $(ratio "$median_users" "$median_default") x the tuned median's events per CPU-s (target >= 0.8; run by run: $(paired "$rows_users" "$rows_tuned"), their median $(paired_median "$rows_users" "$rows_tuned")), $(wall_ratio "$median_users" "$median_default") x its events/s"
} | tee -a "$out/table.md"
echo "Table in $out/table.md; details in $out/loadgen.log, server logs in $out/."
