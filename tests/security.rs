//! TLS, the shared-key / user handshake and connection limits, against the real binary:
//! a Python client written from the protocol spec (digests computed with hashlib), a real
//! Fluent Bit with `tls on` and `Shared_Key`, and certificates generated per test.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
fn certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bqforward test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in ["server", "client"] {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

fn start(source_extra: &str) -> Server {
    Server::start(&format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
  {source_extra}
</source>
<match **>
  @type file
  path {{dir}}/out/events
  append true
  <format>
    @type json
  </format>
</match>
"#
    ))
}

/// `start`, with certificates written first into the server's own directory.
fn start_tls(extra: &str) -> (Server, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let config = extra.replace("{certs}", certs.path().to_str().unwrap());
    (start(&config), certs)
}

/// Runs secure_send.py; returns its exit code and JSON answer.
fn secure_send(server: &Server, args: &[&str]) -> (i32, Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/secure_send.py");
    let out = Command::new(python())
        .arg(script)
        .args(["--port", &server.port.to_string()])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(text.trim()).unwrap_or_else(
        |_| json!({"stdout": text, "stderr": String::from_utf8_lossy(&out.stderr)}),
    );
    (out.status.code().unwrap_or(-1), value)
}

const SECURITY: &str = r#"
  <security>
    self_hostname aggregator.test
    shared_key s3cret
  </security>"#;

#[test]
fn shared_key_handshake_accepts_the_right_key_and_refuses_a_wrong_one() {
    let server = start(SECURITY);
    let (code, answer) = secure_send(&server, &["--shared-key", "s3cret", "--events", "3"]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["acked"], 3);
    assert_eq!(answer["pong"][3], "aggregator.test");
    let (code, answer) = secure_send(&server, &["--shared-key", "wrong"]);
    assert_eq!(code, 2, "{answer}");
    assert_eq!(
        answer["pong"],
        json!(["PONG", false, "shared_key mismatch", "", ""])
    );
    server.wait_log("authentication failed");
    // A client that skips the handshake gets nothing accepted.
    let mut plain = server.connect();
    send(&mut plain, &message_with_ack("x", &json!({}), "c"));
    assert!(
        read_ack(&mut plain).is_err(),
        "no ack without the handshake"
    );
    assert_eq!(read_json_lines(&server.path("out"), ".log").len(), 3);
}

#[test]
fn user_auth_checks_username_and_password() {
    let server = start(
        r#"
  <security>
    self_hostname aggregator.test
    shared_key s3cret
    user_auth true
    <user>
      username alice
      password wonderland
    </user>
  </security>"#,
    );
    let ok = secure_send(
        &server,
        &[
            "--shared-key",
            "s3cret",
            "--username",
            "alice",
            "--password",
            "wonderland",
        ],
    );
    assert_eq!(ok.0, 0, "{}", ok.1);
    let (code, answer) = secure_send(
        &server,
        &[
            "--shared-key",
            "s3cret",
            "--username",
            "alice",
            "--password",
            "nope",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(answer["pong"][2], "username/password mismatch");
}

#[test]
fn tls_with_and_without_client_certificates() {
    let (server, certs) = start_tls(
        r#"
  <transport tls>
    cert_path {certs}/server.pem
    private_key_path {certs}/server-key.pem
  </transport>"#,
    );
    let ca = certs.path().join("ca.pem");
    let (code, answer) = secure_send(
        &server,
        &["--tls", "--ca", ca.to_str().unwrap(), "--events", "5"],
    );
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["acked"], 5);
    // Plain TCP to a TLS port is refused, not served.
    let mut plain = server.connect();
    send(&mut plain, &message_with_ack("x", &json!({}), "c"));
    assert!(read_ack(&mut plain).is_err());

    let (server, certs) = start_tls(
        r#"
  <transport tls>
    cert_path {certs}/server.pem
    private_key_path {certs}/server-key.pem
    client_cert_auth true
    ca_path {certs}/ca.pem
    min_version TLSv1_3
  </transport>"#,
    );
    let path = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let (code, answer) = secure_send(&server, &["--tls", "--ca", &path("ca.pem")]);
    assert_ne!(
        code, 0,
        "a client without a certificate must be refused: {answer}"
    );
    let (code, answer) = secure_send(
        &server,
        &[
            "--tls",
            "--ca",
            &path("ca.pem"),
            "--cert",
            &path("client.pem"),
            "--key",
            &path("client-key.pem"),
        ],
    );
    assert_eq!(code, 0, "{answer}");
    server.wait_log("TLS handshake failed");
}

#[test]
fn tls_and_shared_key_together() {
    let (server, certs) = start_tls(&format!(
        r#"
  <transport tls>
    cert_path {{certs}}/server.pem
    private_key_path {{certs}}/server-key.pem
  </transport>{SECURITY}"#
    ));
    let ca = certs.path().join("ca.pem");
    let (code, answer) = secure_send(
        &server,
        &[
            "--tls",
            "--ca",
            ca.to_str().unwrap(),
            "--shared-key",
            "s3cret",
        ],
    );
    assert_eq!(code, 0, "{answer}");
    let (code, _) = secure_send(
        &server,
        &["--tls", "--ca", ca.to_str().unwrap(), "--shared-key", "bad"],
    );
    assert_eq!(code, 2);
}

#[test]
fn fluent_bit_with_tls_and_shared_key_gets_acks() {
    let Ok(fluent_bit) = std::env::var("FLUENT_BIT_BIN") else {
        skip(
            "fluent_bit_with_tls_and_shared_key_gets_acks",
            "FLUENT_BIT_BIN not set",
        );
        return;
    };
    let (server, certs) = start_tls(&format!(
        r#"
  <transport tls>
    cert_path {{certs}}/server.pem
    private_key_path {{certs}}/server-key.pem
  </transport>{SECURITY}"#
    ));
    let conf = certs.path().join("fluent-bit.conf");
    std::fs::write(
        &conf,
        format!(
            "[SERVICE]\n    Flush 0.2\n    Grace 2\n    Log_Level info\n\n[INPUT]\n    Name dummy\n    Tag fb.secure\n    Dummy {{\"msg\":\"tls\"}}\n    Samples 200\n    Rate 500\n\n[OUTPUT]\n    Name forward\n    Match *\n    Host 127.0.0.1\n    Port {port}\n    tls on\n    tls.verify on\n    tls.ca_file {ca}\n    tls.vhost localhost\n    Shared_Key s3cret\n    Self_Hostname fluentbit.test\n    Require_ack_response true\n    Retry_Limit no_retries\n",
            port = server.port,
            ca = certs.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(fluent_bit)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = wait_for(200, || {
        let dir = server.path("out");
        if dir.exists() {
            read_json_lines(&dir, ".log")
        } else {
            Vec::new()
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), 200, "{}", server.log());
    assert!(lines.iter().all(|l| l["msg"] == "tls"));
}

#[test]
fn max_connections_refuses_the_extra_connection() {
    let server = start("max_connections 2");
    let mut first = server.connect();
    let mut second = server.connect();
    send(&mut first, &message_with_ack("a", &json!({}), "1"));
    assert_eq!(read_ack(&mut first).unwrap(), "1");
    let mut third = server.connect();
    assert!(
        closed_by_server(&mut third),
        "a third connection must be closed"
    );
    send(&mut second, &message_with_ack("a", &json!({}), "2"));
    assert_eq!(read_ack(&mut second).unwrap(), "2");
    server.wait_log("too many connections");
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let server = start("idle_timeout 1s");
    let mut idle = server.connect();
    std::thread::sleep(Duration::from_millis(300));
    send(&mut idle, &message_with_ack("a", &json!({}), "1"));
    assert_eq!(read_ack(&mut idle).unwrap(), "1");
    assert!(closed_by_server(&mut idle));
}
