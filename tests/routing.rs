//! fluentd routing end to end: `<filter>` (record_transformer, grep), `<label>`, relabel,
//! rewrite_tag_filter, copy and `@ERROR`, with configs as fluentd's docs write them, the real
//! binary, the Python fluent-logger client, and outputs checked event for event.

mod common;

use common::*;
use serde_json::{Value, json};

const SOURCE: &str = "<source>\n  @type forward\n  bind 127.0.0.1\n  port 0\n</source>\n";

/// A JSON-lines file output under {dir}/NAME, with the tag injected.
fn file_out(pattern: &str, name: &str) -> String {
    format!(
        "<match {pattern}>\n  @type file\n  path {{dir}}/{name}/out\n  append true\n  <format>\n    @type json\n  </format>\n  <inject>\n    tag_key tag\n  </inject>\n</match>\n"
    )
}

fn send(server: &Server, tag: &str, events: &Value) {
    run_client(
        "fluent_logger_records.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            tag,
            "--events",
            &events.to_string(),
        ],
    );
}

fn read(server: &Server, name: &str, n: usize) -> Vec<Value> {
    wait_for(n, || {
        let dir = server.path(name);
        if dir.exists() {
            read_json_lines(&dir, "out")
        } else {
            Vec::new()
        }
    })
}

fn hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn record_transformer_placeholders_as_documented() {
    let config = format!(
        r#"{SOURCE}
<filter web.**>
  @type record_transformer
  <record>
    hostname "${{hostname}}"
    tag ${{tag}}
    service ${{tag_parts[1]}}
    stream ${{tag_parts[-1]}}
    prefix ${{tag_prefix[1]}}
    suffix ${{tag_suffix[-2]}}
    message ${{record["message"]}} from ${{tag_parts[-2]}}
  </record>
  remove_keys secret
</filter>
<filter web.**>
  @type record_transformer
  auto_typecast true
  <record>
    bytes ${{record["size"]}}
  </record>
</filter>
{}"#,
        file_out("**", "out")
    );
    let server = Server::start(&config);
    send(
        &server,
        "web",
        &json!([
            ["api.access", {"message": "hello", "size": 12, "secret": "x"}],
            ["api.access", {"message": "again", "size": 3}],
        ]),
    );
    let got = read(&server, "out", 2);
    assert_eq!(got.len(), 2, "{}", server.log());
    let host = hostname();
    assert_eq!(
        got[0],
        json!({"message": "hello from api", "size": 12, "hostname": host, "tag": "web.api.access",
               "service": "api", "stream": "access", "prefix": "web.api", "suffix": "api.access",
               "bytes": 12})
    );
    assert_eq!(got[1]["message"], "again from api");
    assert_eq!(got[1]["bytes"], 3);
}

#[test]
fn grep_keeps_and_excludes_with_fluentd_missing_key_semantics() {
    let config = format!(
        r#"{SOURCE}
<filter app.**>
  @type grep
  <regexp>
    key message
    pattern /cool/
  </regexp>
  <exclude>
    key $.http.path
    pattern /^\/health/
  </exclude>
  <exclude>
    key level
    pattern /^$/
  </exclude>
</filter>
{}"#,
        file_out("**", "out")
    );
    let server = Server::start(&config);
    send(
        &server,
        "app",
        &json!([
            ["", {"seq": 0, "message": "cool", "level": "info"}],
            ["", {"seq": 1, "message": "not it", "level": "info"}],
            ["", {"seq": 2, "message": "cool", "level": "info", "http": {"path": "/healthz"}}],
            ["", {"seq": 3, "message": "cool"}],
            ["", {"seq": 4, "level": "info"}],
            ["", {"seq": 5, "message": "very cool", "level": "warn", "http": {"path": "/api"}}],
        ]),
    );
    // A marker that passes, sent last, tells when everything before it was processed.
    send(
        &server,
        "app",
        &json!([["", {"seq": 6, "message": "cool", "level": "end"}]]),
    );
    let got = read(&server, "out", 3);
    let seqs: Vec<u64> = got.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    // 1: no match; 2: health check; 3: missing level reads as "" and ^$ excludes it;
    // 4: missing message reads as "", which /cool/ does not match.
    assert_eq!(seqs, [0, 5, 6], "{}", server.log());
}

#[test]
fn rewrite_tag_filter_splits_a_stream_by_field() {
    let config = format!(
        r#"{SOURCE}
<match app.**>
  @type rewrite_tag_filter
  <rule>
    key log_type
    pattern /^(access|error)$/
    tag logs.$1.${{tag_parts[-1]}}
  </rule>
  <rule>
    key log_type
    pattern /.+/
    tag logs.other
  </rule>
</match>
{}"#,
        file_out("logs.**", "out")
    );
    let server = Server::start(&config);
    send(
        &server,
        "app",
        &json!([
            ["web", {"seq": 0, "log_type": "access"}],
            ["web", {"seq": 1, "log_type": "error"}],
            ["web", {"seq": 2, "log_type": "debug"}],
            ["web", {"seq": 3}],
            ["web", {"seq": 4, "log_type": "access"}],
        ]),
    );
    let got = read(&server, "out", 4);
    let mut pairs: Vec<(u64, &str)> = got
        .iter()
        .map(|l| (l["seq"].as_u64().unwrap(), l["tag"].as_str().unwrap()))
        .collect();
    // Re-tagged events are grouped per new tag; order holds within a tag.
    pairs.sort();
    // seq 3 has no log_type: no rule applies and it is dropped, as the plugin does.
    assert_eq!(
        pairs,
        [
            (0, "logs.access.web"),
            (1, "logs.error.web"),
            (2, "logs.other"),
            (4, "logs.access.web")
        ],
        "{}",
        server.log()
    );
}

#[test]
fn labels_relabel_and_source_label() {
    let config = format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
  @label @INGEST
</source>
<match **>
  @type null
</match>
<label @INGEST>
  <filter **>
    @type record_transformer
    <record>
      stage ingest
    </record>
  </filter>
  <match **>
    @type relabel
    @label @OUT
  </match>
</label>
<label @OUT>
  <filter **>
    @type record_transformer
    <record>
      stage2 out
    </record>
  </filter>
  {}
</label>
"#,
        file_out("**", "out")
    );
    let server = Server::start(&config);
    send(&server, "svc", &json!([["", {"seq": 0}], ["", {"seq": 1}]]));
    let got = read(&server, "out", 2);
    assert_eq!(
        got,
        [
            json!({"seq": 0, "stage": "ingest", "stage2": "out", "tag": "svc"}),
            json!({"seq": 1, "stage": "ingest", "stage2": "out", "tag": "svc"})
        ],
        "{}",
        server.log()
    );
}

/// A `<store>` whose file cannot be created: its directory is a regular file.
fn failing_store(flags: &str) -> String {
    format!(
        "  <store {flags}>\n    @type file\n    path {{dir}}/blocker/out\n    append true\n  </store>\n"
    )
}

fn good_store() -> &'static str {
    "  <store>\n    @type file\n    path {dir}/good/out\n    append true\n    <format>\n      @type json\n    </format>\n  </store>\n"
}

#[test]
fn copy_acks_only_when_every_store_has_the_event() {
    let config = format!(
        "{SOURCE}<match ok.**>\n  @type copy\n  copy_mode deep\n{}{}</match>\n<match bad.**>\n  @type copy\n{}{}</match>\n",
        failing_store("ignore_error"),
        good_store(),
        good_store(),
        failing_store(""),
    );
    let server = Server::start(&config);
    std::fs::write(server.path("blocker"), "not a directory").unwrap();

    // ignore_error on the failing store: the copy goes on, the event is acked and stored.
    let mut stream = server.connect();
    send_bytes(
        &mut stream,
        &message_with_ack("ok.x", &json!({"seq": 1}), "c1"),
    );
    assert!(read_ack(&mut stream).unwrap().contains("c1"));
    assert_eq!(read(&server, "good", 1), [json!({"seq": 1})]);

    // Without it, the failing store fails the copy: no ack, so the client keeps the event.
    let mut stream = server.connect();
    send_bytes(
        &mut stream,
        &message_with_ack("bad.x", &json!({"seq": 2}), "c2"),
    );
    assert!(closed_by_server(&mut stream), "no ack may be sent");
    server.wait_log("output did not accept events");
}

fn send_bytes(stream: &mut std::net::TcpStream, bytes: &[u8]) {
    common::send(stream, bytes);
}

#[test]
fn events_a_filter_cannot_process_go_to_the_error_label() {
    let config = format!(
        r#"{SOURCE}
<filter **>
  @type record_transformer
  renew_time_key ts
</filter>
{}
<label @ERROR>
  {}
</label>
"#,
        file_out("**", "out"),
        file_out("**", "dead")
    );
    let server = Server::start(&config);
    let mut stream = server.connect();
    send_bytes(
        &mut stream,
        &message_with_ack("app", &json!({"seq": 1, "ts": 1600000000}), "a"),
    );
    assert!(read_ack(&mut stream).unwrap() == "a");
    send_bytes(
        &mut stream,
        &message_with_ack("app", &json!({"seq": 2, "ts": {"bad": 1}}), "b"),
    );
    // Accepted into @ERROR counts as accepted: the sender gets its ack.
    assert!(read_ack(&mut stream).unwrap() == "b");
    assert_eq!(
        read(&server, "out", 1),
        [json!({"seq": 1, "ts": 1600000000, "tag": "app"})]
    );
    assert_eq!(
        read(&server, "dead", 1),
        [json!({"seq": 2, "ts": {"bad": 1}, "tag": "app"})]
    );
}

#[test]
fn a_rewrite_loop_is_bounded() {
    let config = format!(
        r#"{SOURCE}
<match loop.**>
  @type rewrite_tag_filter
  <rule>
    key n
    pattern /.+/
    tag loop.${{tag}}
  </rule>
</match>
<label @ERROR>
  {}
</label>
"#,
        file_out("**", "dead")
    );
    let server = Server::start(&config);
    let mut stream = server.connect();
    send_bytes(
        &mut stream,
        &message_with_ack("loop", &json!({"n": 1}), "a"),
    );
    assert!(read_ack(&mut stream).unwrap() == "a");
    let dead = read(&server, "dead", 1);
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["tag"]
            .as_str()
            .unwrap()
            .starts_with("loop.loop.loop.")
    );
    server.wait_log("re-emitted more than 8 times");
}

/// The issue's typical aggregator: forward in; record_transformer adds hostname and tag;
/// grep drops health checks; rewrite_tag_filter splits by log type; copy to BigQuery and to
/// a file archive; @ERROR to a dead-letter file.
#[test]
fn typical_aggregator_config_runs_unchanged() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset("proj", "logs");
    let schema = json!([
        {"name": "seq", "type": "INTEGER"},
        {"name": "path", "type": "STRING"},
        {"name": "log_type", "type": "STRING"},
        {"name": "hostname", "type": "STRING"},
        {"name": "source_tag", "type": "STRING"},
    ]);
    emulator.create_table("proj", "logs", "access", schema.clone());
    emulator.create_table("proj", "logs", "error", schema);
    let config = typical_config(&emulator.endpoint());
    let server = Server::start(&config);
    send(
        &server,
        "app",
        &json!([
            ["web", {"seq": 0, "path": "/api", "log_type": "access"}],
            ["web", {"seq": 1, "path": "/healthz", "log_type": "access"}],
            ["web", {"seq": 2, "path": "/api", "log_type": "error"}],
            ["web", {"seq": 3, "path": "/api", "log_type": "access", "ts": [1]}],
            ["web", {"seq": 4, "path": "/x", "log_type": "access"}],
        ]),
    );
    let host = hostname();
    let archive = read(&server, "archive", 3);
    let mut seqs: Vec<(u64, &str)> = archive
        .iter()
        .map(|l| (l["seq"].as_u64().unwrap(), l["tag"].as_str().unwrap()))
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        [(0, "bq.access"), (2, "bq.error"), (4, "bq.access")],
        "{}",
        server.log()
    );
    for line in &archive {
        assert_eq!(line["hostname"], host);
        assert_eq!(line["source_tag"], "app.web");
    }
    let access = wait_for(2, || emulator.rows("proj", "logs", "access"));
    let error = wait_for(1, || emulator.rows("proj", "logs", "error"));
    assert_eq!(access.len(), 2, "{}", server.log());
    assert_eq!(error.len(), 1);
    assert_eq!(access[0]["hostname"], host);
    let dead = read(&server, "dead", 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["seq"], 3);

    // `bqforward check` prints the resolved pipeline.
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(server.path("fluent.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "<filter app.**> add_host (@type record_transformer)",
        "<filter app.**> no_health (@type grep): keep none of [path =~ ^\\/health]",
        "<match app.**> -> split (@type rewrite_tag_filter) rules [log_type =~ ^(access|error)$]",
        "<match bq.**> -> fanout (@type copy):",
        "<store> -> to_bq (@type bigquery_insert)",
        "<store ignore_error> -> archive (@type file)",
        "label @ERROR:",
        "<match **> -> dead_letters (@type file)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

fn typical_config(endpoint: &str) -> String {
    format!(
        r#"{SOURCE}
<filter app.**>
  @type record_transformer
  @id add_host
  renew_time_key ts
  <record>
    hostname "${{hostname}}"
    source_tag ${{tag}}
  </record>
</filter>
<filter app.**>
  @type grep
  @id no_health
  <exclude>
    key $.path
    pattern /^\/health/
  </exclude>
</filter>
<match app.**>
  @type rewrite_tag_filter
  @id split
  <rule>
    key log_type
    pattern /^(access|error)$/
    tag bq.$1
  </rule>
</match>
<match bq.**>
  @type copy
  @id fanout
  <store>
    @type bigquery_insert
    @id to_bq
    auth_method none
    endpoint {endpoint}
    project proj
    dataset logs
    table ${{tag[1]}}
    fetch_schema true
    <buffer>
      flush_interval 0.1s
    </buffer>
  </store>
  <store ignore_error>
    @type file
    @id archive
    path {{dir}}/archive/out
    append true
    <format>
      @type json
    </format>
    <inject>
      tag_key tag
    </inject>
  </store>
</match>
<label @ERROR>
  <match **>
    @type file
    @id dead_letters
    path {{dir}}/dead/out
    append true
    <format>
      @type json
    </format>
  </match>
</label>
"#
    )
}
