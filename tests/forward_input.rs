//! The Forward input end to end: the real binary, real clients, real sockets, and the file
//! output's lines checked event for event.

mod common;

use common::*;
use serde_json::{Value, json};

/// A forward source on a free port and a JSON-lines file output per tag under {dir}/out.
const FILE_CONFIG: &str = r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match **>
  @type file
  path {dir}/out/${tag}
  append true
  <format>
    @type json
  </format>
  <inject>
    tag_key tag
    time_key time
    time_type float
  </inject>
</match>
"#;

fn lines(server: &Server, n: usize) -> Vec<Value> {
    wait_for(n, || read_json_lines(&server.path("out"), ".log"))
}

#[test]
fn fluent_logger_events_arrive_intact_in_the_file_output() {
    let server = Server::start(FILE_CONFIG);
    let port = server.port.to_string();
    run_client(
        "fluent_logger_send.py",
        &[
            "--port", &port, "--tag", "app", "--label", "web", "--count", "200",
        ],
    );
    run_client(
        "fluent_logger_send.py",
        &[
            "--port",
            &port,
            "--tag",
            "app",
            "--label",
            "ns",
            "--count",
            "50",
            "--nanosecond",
        ],
    );
    let got = lines(&server, 250);
    assert_eq!(got.len(), 250, "{}", server.log());
    let web: Vec<&Value> = got.iter().filter(|l| l["tag"] == "app.web").collect();
    let ns: Vec<&Value> = got.iter().filter(|l| l["tag"] == "app.ns").collect();
    assert_eq!(web.len(), 200);
    assert_eq!(ns.len(), 50);
    for (i, line) in web.iter().enumerate() {
        assert_eq!(line["seq"], i);
        assert_eq!(line["msg"], format!("event {i}"));
        assert_eq!(line["unicode"], "café 😀");
        assert_eq!(line["list"], json!([1, "a", null]));
        assert_eq!(line["nested"], json!({"k": i}));
        assert_eq!(line["pi"], 3.25);
        assert_eq!(line["ok"], true);
        // Integer-second times from the plain sender.
        assert_eq!(line["time"].as_f64().unwrap().fract(), 0.0);
    }
    // EventTime keeps sub-second precision (one of 50 landing on .0 exactly is unlikely).
    assert!(
        ns.iter()
            .any(|l| l["time"].as_f64().unwrap().fract() != 0.0)
    );
    let seqs: Vec<u64> = ns.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
}

#[test]
fn fluent_logger_over_a_unix_socket() {
    let server = Server::start(
        r#"
<source>
  @type unix
  path {dir}/fluent.sock
</source>
<match **>
  @type file
  path {dir}/out/unix
  append true
  <format>
    @type json
  </format>
</match>
"#,
    );
    let sock = server.path("fluent.sock");
    run_client(
        "fluent_logger_send.py",
        &[
            "--unix",
            sock.to_str().unwrap(),
            "--tag",
            "u",
            "--label",
            "x",
            "--count",
            "30",
        ],
    );
    let got = lines(&server, 30);
    let seqs: Vec<u64> = got.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..30).collect::<Vec<_>>());
}

#[test]
fn every_mode_with_acks_arrives_in_order() {
    let server = Server::start(FILE_CONFIG);
    let port = server.port.to_string();
    for (mode, tag) in [
        ("message", "m.message"),
        ("forward", "m.forward"),
        ("packed", "m.packed"),
        ("compressed", "m.compressed"),
    ] {
        let out = run_client(
            "forward_send.py",
            &[
                "--port",
                &port,
                "--mode",
                mode,
                "--tag",
                tag,
                "--connections",
                "2",
                "--events",
                "300",
                "--chunk",
                "50",
                "--ack",
                "--gzip-members",
                "3",
            ],
        );
        let summary: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(summary, json!({"sent": 600, "acked": 600}), "{mode}");
    }
    // Acked means written: no waiting needed.
    let got = read_json_lines(&server.path("out"), ".log");
    for tag in ["m.message", "m.forward", "m.packed", "m.compressed"] {
        for conn in 0..2 {
            let seqs: Vec<u64> = got
                .iter()
                .filter(|l| l["tag"] == tag && l["conn"] == conn)
                .map(|l| l["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(
                seqs,
                (0..300).collect::<Vec<_>>(),
                "{tag} connection {conn}"
            );
        }
    }
}

#[test]
fn one_million_packed_events_over_four_connections_with_acks() {
    let server = Server::start(FILE_CONFIG);
    let out = run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "packed",
            "--tag",
            "big",
            "--connections",
            "4",
            "--events",
            "250000",
            "--chunk",
            "5000",
            "--ack",
            "--pad",
            "20",
        ],
    );
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary, json!({"sent": 1_000_000, "acked": 1_000_000}));
    let got = read_json_lines(&server.path("out"), "big");
    assert_eq!(got.len(), 1_000_000);
    let mut next = [0u64; 4];
    for line in &got {
        let conn = line["conn"].as_u64().unwrap() as usize;
        assert_eq!(
            line["seq"].as_u64().unwrap(),
            next[conn],
            "order on connection {conn}"
        );
        next[conn] += 1;
    }
    assert_eq!(next, [250_000; 4]);
}

#[test]
fn ack_is_withheld_when_the_output_cannot_write() {
    // The output directory is a regular file, so every write fails.
    let server = Server::start(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match **>
  @type file
  path {dir}/blocked/sub/out
</match>
"#,
    );
    std::fs::write(server.path("blocked"), "not a directory").unwrap();
    let mut stream = server.connect();
    send(&mut stream, &message_with_ack("t", &json!({"a": 1}), "c1"));
    assert!(
        read_ack(&mut stream).is_err(),
        "no ack may be sent for unwritten events"
    );
    server.wait_log("output did not accept events");
}

#[test]
fn skipped_invalid_events_do_not_cost_the_rest_of_the_message() {
    let server = Server::start(FILE_CONFIG);
    let mut stream = server.connect();
    // Forward mode: valid, time is a string, record is a number, valid.
    let msg = rmp_serde::to_vec(&(
        "skip.test",
        json!([[1_700_000_000u32, {"n": 1}], ["yesterday", {"n": 2}], [1, 5], [1_700_000_001u32, {"n": 4}]]),
        json!({"chunk": "k1"}),
    ))
    .unwrap();
    send(&mut stream, &msg);
    assert_eq!(read_ack(&mut stream).unwrap(), "k1");
    let got = read_json_lines(&server.path("out"), ".log");
    let ns: Vec<&Value> = got.iter().map(|l| &l["n"]).collect();
    assert_eq!(ns, [&json!(1), &json!(4)]);
    server.wait_log("got invalid event and drop it");
}

#[test]
fn tag_rewrites_and_source_address_are_applied() {
    let server = Server::start(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
  add_tag_prefix from_edge
  source_address_key client_ip
  source_hostname_key client_host
</source>
<match from_edge.**>
  @type file
  path {dir}/out/edge
  append true
  <format>
    @type json
  </format>
  <inject>
    tag_key tag
  </inject>
</match>
"#,
    );
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("app.x", &json!({"client_ip": "spoofed", "v": 1}), "a"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "a");
    let got = read_json_lines(&server.path("out"), "edge");
    assert_eq!(
        got,
        vec![
            json!({"v": 1, "client_ip": "127.0.0.1", "client_host": "127.0.0.1", "tag": "from_edge.app.x"})
        ]
    );
}

#[test]
fn udp_heartbeat_is_answered() {
    let server = Server::start(FILE_CONFIG);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    socket.send_to(b"\0", ("127.0.0.1", server.port)).unwrap();
    let mut buf = [0u8; 8];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"\0");
}

#[test]
fn unmatched_tags_are_dropped_with_a_warning_and_still_acked() {
    let server = Server::start(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match only.this>
  @type null
</match>
"#,
    );
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("other.tag", &json!({"a": 1}), "u1"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "u1");
    let line = server.wait_log("no patterns matched");
    assert!(line.contains("other.tag"), "{line}");
}

#[test]
fn stdout_output_prints_fluentd_stdout_format() {
    let server = Server::start(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match **>
  @type stdout
  <format>
    @type stdout
    utc true
  </format>
</match>
"#,
    );
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("s.t", &json!({"k": "v"}), "s1"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "s1");
    let out = wait_for(1, || server.stdout());
    assert_eq!(
        out,
        vec![r#"2023-11-14 22:13:20.000000000 +0000 s.t: {"k":"v"}"#.to_string()]
    );
}

#[test]
fn sigterm_finishes_acked_work_and_exits_zero() {
    let mut server = Server::start(FILE_CONFIG);
    let out = run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "forward",
            "--tag",
            "term",
            "--events",
            "1000",
            "--chunk",
            "100",
            "--ack",
        ],
    );
    assert!(out.contains("\"acked\": 1000"), "{out}");
    let idle = server.connect();
    let status = server.terminate();
    assert!(status.success(), "{status}: {}", server.log());
    drop(idle);
    assert_eq!(read_json_lines(&server.path("out"), "term").len(), 1000);
    assert!(server.log().contains("shutdown complete"));
}
