//! Google credentials end to end with no cloud: the real bqforward binary, the repo's
//! bigquery-emulator recording the bearer tokens it receives (`/_emulator/auth`), and local
//! stand-ins (tests/clients/fake_google_auth.py) for the ECS container credentials endpoint,
//! Google's STS token exchange, IAM generateAccessToken and the GCE metadata server. Every
//! URL a credential file names points at them; the token checked is the one BigQuery sees.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROJECT: &str = "proj";
const DATASET: &str = "logs";
const TABLE: &str = "events";
const AUDIENCE: &str = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/aws-pool/providers/aws";
const SERVICE_ACCOUNT: &str = "bqforward-writer@proj.iam.gserviceaccount.com";
/// Variables a developer's shell may hold that would change which credentials are found.
const CLEAN_ENV: [(&str, &str); 7] = [
    ("AWS_ACCESS_KEY_ID", ""),
    ("AWS_SECRET_ACCESS_KEY", ""),
    ("AWS_SESSION_TOKEN", ""),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", ""),
    ("AWS_DEFAULT_REGION", ""),
    ("GCE_METADATA_HOST", ""),
    ("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", ""),
];

/// The Python stand-ins for AWS and Google's token endpoints.
struct FakeAuth {
    child: Child,
    port: u16,
}

impl FakeAuth {
    fn start(args: &[&str]) -> FakeAuth {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/fake_google_auth.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fake_google_auth.py said {line:?}"));
        FakeAuth { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What each stand-in received.
    fn log(&self) -> Value {
        http(self.port, "GET", "/_log", None).1
    }

    /// An `external_account` file for AWS as `gcloud iam workload-identity-pools
    /// create-cred-config --aws` writes it, with STS and IAM pointed at the stand-ins.
    fn aws_credential_file(&self, dir: &Path) -> PathBuf {
        let file = json!({
            "universe_domain": "googleapis.com",
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
            "token_url": self.url("/v1/token"),
            "service_account_impersonation_url": self.url(&format!(
                "/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken"
            )),
            "credential_source": {
                "environment_id": "aws1",
                "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
                "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
                "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
                "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token"
            }
        });
        let path = dir.join("aws-federation.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
        path
    }

    /// The environment an ECS task with a role has (the agent's token, as with a full URI).
    fn ecs_env(&self, credential_file: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = CLEAN_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend([
            (
                "GOOGLE_APPLICATION_CREDENTIALS".to_owned(),
                credential_file.display().to_string(),
            ),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_owned(),
                self.url("/ecs/credentials"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN".to_owned(),
                "ecs-agent-token".to_owned(),
            ),
            ("AWS_REGION".to_owned(), "us-east-2".to_owned()),
        ]);
        env
    }
}

impl Drop for FakeAuth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emulator_with_table() -> Emulator {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        TABLE,
        json!([{"name": "seq", "type": "INTEGER"}, {"name": "msg", "type": "STRING"}]),
    );
    emulator
}

/// Which bearer tokens the emulator accepts from now on (`refuse`: answered 401).
fn set_token_policy(emulator: &Emulator, policy: Value) {
    let (status, answer) = emulator.call("POST", "/_emulator/auth", Some(&policy));
    assert_eq!(status, 200, "{answer}");
}

/// The bearer tokens the emulator has received, in order first seen (the test's own setup
/// calls carry none).
fn tokens_seen(emulator: &Emulator) -> Vec<String> {
    let (_, answer) = emulator.call("GET", "/_emulator/auth", None);
    answer["seen"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().filter(|t| !t.is_empty()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn config(emulator: &Emulator, auth: &str, buffer: &str) -> String {
    format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_insert
  {auth}
  endpoint {endpoint}
  project {PROJECT}
  dataset {DATASET}
  table {TABLE}
  ignore_unknown_values true
  <buffer>
    flush_interval 0.1s
    {buffer}
  </buffer>
  <secondary>
    @type file
    path {{dir}}/dead/rejected
  </secondary>
</match>
"#,
        endpoint = emulator.endpoint()
    )
}

fn send(server: &Server, label: &str, count: usize) {
    run_client(
        "fluent_logger_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "app.auth",
            "--label",
            label,
            "--count",
            &count.to_string(),
        ],
    );
}

fn rows_landed(emulator: &Emulator, n: u64) -> u64 {
    let mut count = 0;
    for _ in 0..600 {
        count = emulator.count(PROJECT, DATASET, TABLE);
        if count >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    count
}

fn start(config: &str, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_env(config, &[], &env)
}

/// `bqforward check` on `config` with `env`: (exit code, stdout + stderr).
fn check(config: &str, env: &[(String, String)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fluent.conf");
    std::fs::write(&path, config.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    let mut command = Command::new(BIN);
    for (name, value) in env {
        if value.is_empty() {
            command.env_remove(name);
        } else {
            command.env(name, value);
        }
    }
    let out = command.args(["check", "-c"]).arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn clean_env() -> Vec<(String, String)> {
    CLEAN_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/credentials")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn ecs_task_role_becomes_the_impersonated_token_bigquery_sees() {
    let fake = FakeAuth::start(&[]);
    let emulator = emulator_with_table();
    set_token_policy(&emulator, json!({"require": ["sa-token-1"]}));
    let dir = tempfile::tempdir().unwrap();
    let env = fake.ecs_env(&fake.aws_credential_file(dir.path()));
    let conf = config(&emulator, "auth_method application_default", "");

    let (code, out) = check(&conf, &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("credentials: external_account (aws: ECS task role from the container credentials endpoint"),
        "{out}"
    );
    assert!(
        out.contains(&format!("impersonates {SERVICE_ACCOUNT}")),
        "{out}"
    );

    let server = start(&conf, &env);
    send(&server, "ecs", 10);
    assert_eq!(rows_landed(&emulator, 10), 10, "{}", server.log());

    assert_eq!(tokens_seen(&emulator), ["sa-token-1"]);
    let log = fake.log();
    assert_eq!(log["errors"], json!([]), "{log}");
    assert_eq!(log["ecs"][0]["authorization"], "ecs-agent-token", "{log}");
    assert_eq!(log["sts"][0]["audience"], AUDIENCE, "{log}");
    // The STS token only serves to impersonate: it asks for the IAM scope.
    assert_eq!(
        log["sts"][0]["scope"], "https://www.googleapis.com/auth/iam",
        "{log}"
    );
    assert_eq!(
        log["iam"][0]["authorization"], "Bearer sts-token-1",
        "{log}"
    );
    assert!(
        log["iam"][0]["path"]
            .as_str()
            .is_some_and(|p| p.contains(SERVICE_ACCOUNT)),
        "{log}"
    );
}

#[test]
fn a_refused_token_is_replaced_and_the_request_sent_again_at_once() {
    let fake = FakeAuth::start(&[]);
    let emulator = emulator_with_table();
    // BigQuery revoked the first token: 401 authError.
    set_token_policy(&emulator, json!({"refuse": ["sa-token-1"]}));
    let dir = tempfile::tempdir().unwrap();
    let env = fake.ecs_env(&fake.aws_credential_file(dir.path()));
    // A chunk retry would come only after a minute: rows landing sooner were sent again at
    // once with a new token.
    let conf = config(
        &emulator,
        "auth_method application_default",
        "retry_wait 60s",
    );
    let server = start(&conf, &env);
    send(&server, "refused", 5);
    assert_eq!(rows_landed(&emulator, 5), 5, "{}", server.log());
    assert_eq!(tokens_seen(&emulator), ["sa-token-1", "sa-token-2"]);
    let log = fake.log();
    assert_eq!(log["sts"].as_array().map(Vec::len), Some(2), "{log}");
    assert!(server.log().contains("token refused"), "{}", server.log());
}

#[test]
fn an_expired_token_is_replaced_before_it_is_sent() {
    // Tokens that live two seconds: the second batch must carry a new one, with no 401.
    let fake = FakeAuth::start(&["--expires-in", "2"]);
    let emulator = emulator_with_table();
    let dir = tempfile::tempdir().unwrap();
    let env = fake.ecs_env(&fake.aws_credential_file(dir.path()));
    let conf = config(&emulator, "auth_method application_default", "");
    let server = start(&conf, &env);
    send(&server, "first", 3);
    assert_eq!(rows_landed(&emulator, 3), 3, "{}", server.log());
    std::thread::sleep(Duration::from_secs(3));
    // From now on the first token is refused: reusing it would show as a 401 in the log.
    set_token_policy(&emulator, json!({"refuse": ["sa-token-1"]}));
    send(&server, "second", 3);
    assert_eq!(rows_landed(&emulator, 6), 6, "{}", server.log());
    let seen = tokens_seen(&emulator);
    assert_eq!(
        seen.first().map(String::as_str),
        Some("sa-token-1"),
        "{seen:?}"
    );
    assert!(
        seen.len() >= 2 && !seen[1..].contains(&"sa-token-1".to_owned()),
        "{seen:?}"
    );
    assert!(!server.log().contains("token refused"), "{}", server.log());
}

#[test]
fn sts_failures_are_retried() {
    let fake = FakeAuth::start(&["--sts-failures", "2"]);
    let emulator = emulator_with_table();
    let dir = tempfile::tempdir().unwrap();
    let env = fake.ecs_env(&fake.aws_credential_file(dir.path()));
    let conf = config(&emulator, "auth_method application_default", "");
    let server = start(&conf, &env);
    send(&server, "sts", 4);
    assert_eq!(rows_landed(&emulator, 4), 4, "{}", server.log());
    let log = fake.log();
    assert_eq!(log["sts"].as_array().map(Vec::len), Some(3), "{log}");
    assert_eq!(tokens_seen(&emulator), ["sa-token-1"]);
}

#[test]
fn sts_that_keeps_failing_is_an_error_naming_the_step() {
    let fake = FakeAuth::start(&["--sts-failures", "1000"]);
    let emulator = emulator_with_table();
    let dir = tempfile::tempdir().unwrap();
    let env = fake.ecs_env(&fake.aws_credential_file(dir.path()));
    let conf = config(&emulator, "auth_method application_default", "");
    let server = start(&conf, &env);
    send(&server, "down", 2);
    let line = server.wait_log("failed to exchange token");
    assert!(
        line.contains("Google credentials (external_account"),
        "{line}"
    );
    assert!(line.contains("503"), "{line}");
    assert_eq!(emulator.count(PROJECT, DATASET, TABLE), 0);
    let log = fake.log();
    assert!(
        log["sts"].as_array().map(Vec::len).unwrap_or(0) >= 3,
        "retried before giving up: {log}"
    );
}

#[test]
fn a_bad_credential_file_fails_check_naming_the_file() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    std::fs::write(
        &path,
        r#"{"type": "service_account", "client_email": "x@p.iam.gserviceaccount.com", "private_key_id": "SECRET-MATERIAL"}"#,
    )
    .unwrap();
    let mut env = clean_env();
    env.push((
        "GOOGLE_APPLICATION_CREDENTIALS".into(),
        path.display().to_string(),
    ));
    let conf = config(&emulator, "auth_method application_default", "");
    let (code, out) = check(&conf, &env);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(&path.display().to_string()), "{out}");
    assert!(out.contains("service_account needs private_key"), "{out}");
    assert!(!out.contains("SECRET-MATERIAL"), "{out}");

    std::fs::write(&path, "{\"type\": \"service_account\", ").unwrap();
    let (code, out) = check(&conf, &env);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is not JSON"), "{out}");

    let conf = config(
        &emulator,
        "auth_method json_key\n  json_key /nonexistent/key.json",
        "",
    );
    let (code, out) = check(&conf, &clean_env());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("/nonexistent/key.json"), "{out}");
}

#[test]
fn a_config_without_auth_method_says_what_the_default_needs() {
    let emulator = Emulator::start(&[]);
    let (code, out) = check(&config(&emulator, "", ""), &clean_env());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("auth_method is not set, so the plugin's default private_key applies: it needs 'email' and 'private_key_path'"),
        "{out}"
    );
}

/// The JWT's claims (service accounts sign their own tokens: no token endpoint involved).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[test]
fn a_p12_key_from_the_plugin_default_is_exchanged_for_the_token_bigquery_sees() {
    // The fixture's P12 and JSON hold the same key: the stand-in checks the JWT's signature.
    let fake = FakeAuth::start(&[
        "--service-account-key",
        &fixture("test-only-service-account.json"),
    ]);
    let emulator = emulator_with_table();
    let email = "bqforward-test@proj.iam.gserviceaccount.com";
    // No auth_method: fluent-plugin-bigquery's default, private_key.
    let auth = format!(
        "email {email}\n  private_key_path {}\n  private_key_passphrase notasecret",
        fixture("test-only-service-account.p12")
    );
    let conf = config(&emulator, &auth, "");
    let mut env = clean_env();
    env.push(("BQFORWARD_P12_TOKEN_URI".into(), fake.url("/oauth2/token")));
    let (code, out) = check(&conf, &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("service_account {email} from the P12 key")),
        "{out}"
    );
    let server = start(&conf, &env);
    send(&server, "p12", 2);
    assert_eq!(rows_landed(&emulator, 2), 2, "{}", server.log());
    assert_eq!(tokens_seen(&emulator), ["oauth-token-1"]);
    let log = fake.log();
    assert_eq!(log["errors"], json!([]), "{log}");
    assert_eq!(log["oauth"][0]["iss"], email, "{log}");
    assert_eq!(log["oauth"][0]["aud"], fake.url("/oauth2/token"), "{log}");
    assert_eq!(
        log["oauth"][0]["scope"], "https://www.googleapis.com/auth/cloud-platform",
        "{log}"
    );

    let wrong = conf.replace(
        "private_key_passphrase notasecret",
        "private_key_passphrase nope",
    );
    let (code, out) = check(&wrong, &clean_env());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("openssl pkcs12 -legacy -in"), "{out}");
    assert!(out.contains("auth_method json_key"), "{out}");
}

#[test]
fn json_key_and_compute_engine_tokens_reach_the_endpoint() {
    let emulator = emulator_with_table();
    let key = fixture("test-only-service-account.json");
    let conf = config(
        &emulator,
        &format!("auth_method json_key\n  json_key {key}"),
        "",
    );
    let server = start(&conf, &clean_env());
    send(&server, "json", 2);
    assert_eq!(rows_landed(&emulator, 2), 2, "{}", server.log());
    let seen = tokens_seen(&emulator);
    assert_eq!(
        jwt_claims(seen.first().map(String::as_str).unwrap_or(""))["iss"],
        "bqforward-test@proj.iam.gserviceaccount.com",
        "{seen:?}"
    );
    drop(server);

    let fake = FakeAuth::start(&[]);
    let mut env = clean_env();
    env.retain(|(k, _)| k != "GCE_METADATA_HOST");
    env.push((
        "GCE_METADATA_HOST".into(),
        format!("127.0.0.1:{}", fake.port),
    ));
    let conf = config(&emulator, "auth_method compute_engine", "");
    let (code, out) = check(&conf, &env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("compute_engine: the metadata server at 127.0.0.1"),
        "{out}"
    );
    let server = start(&conf, &env);
    send(&server, "mds", 2);
    assert_eq!(rows_landed(&emulator, 4), 4, "{}", server.log());
    assert!(tokens_seen(&emulator).contains(&"mds-token-1".to_owned()));
    assert_eq!(fake.log()["mds"][0]["flavor"], "Google");
}

#[test]
fn the_image_way_json_key_from_the_environment_federates_from_ecs_or_aws_keys() {
    let fake = FakeAuth::start(&[]);
    let emulator = emulator_with_table();
    let dir = tempfile::tempdir().unwrap();
    let file = fake.aws_credential_file(dir.path());
    let credential_config = std::fs::read_to_string(&file).unwrap();
    // As deploy/config/bqforward.conf reads it: the configuration JSON in the environment.
    let conf = config(
        &emulator,
        "auth_method json_key\n  json_key \"#{ENV['BIGQUERY_JSON_KEY'] || ENV['BIGQUERY_CREDENTIAL_CONFIG']}\"",
        "",
    );
    let mut ecs = fake.ecs_env(&file);
    ecs.retain(|(k, _)| k != "GOOGLE_APPLICATION_CREDENTIALS");
    ecs.push((
        "BIGQUERY_CREDENTIAL_CONFIG".into(),
        credential_config.clone(),
    ));
    ecs.push(("BIGQUERY_JSON_KEY".into(), String::new()));
    let (code, out) = check(&conf, &ecs);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ECS task role"), "{out}");
    let server = start(&conf, &ecs);
    send(&server, "ecs", 2);
    assert_eq!(rows_landed(&emulator, 2), 2, "{}", server.log());
    drop(server);

    // Outside ECS, AWS keys in the environment (an EC2 instance profile would come from IMDS).
    let mut keys = clean_env();
    keys.retain(|(k, _)| !k.starts_with("AWS_"));
    keys.extend(
        [
            ("AWS_ACCESS_KEY_ID", "AKIDECSTASKROLE"),
            ("AWS_SECRET_ACCESS_KEY", "ecs-secret-key"),
            ("AWS_SESSION_TOKEN", "ecs-session-token"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", ""),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", ""),
            ("BIGQUERY_JSON_KEY", ""),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    keys.push(("BIGQUERY_CREDENTIAL_CONFIG".into(), credential_config));
    let (code, out) = check(&conf, &keys);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("aws: keys from AWS_ACCESS_KEY_ID"), "{out}");
    let server = start(&conf, &keys);
    send(&server, "keys", 2);
    assert_eq!(rows_landed(&emulator, 4), 4, "{}", server.log());
    let log = fake.log();
    assert_eq!(log["errors"], json!([]), "{log}");
    // One ECS fetch (the first run); the second signed with the environment's keys.
    assert_eq!(log["ecs"].as_array().map(Vec::len), Some(1), "{log}");
    assert_eq!(tokens_seen(&emulator), ["sa-token-1", "sa-token-2"]);
}

#[test]
fn an_ecs_endpoint_that_refuses_is_an_error_naming_it() {
    let fake = FakeAuth::start(&[]);
    let emulator = emulator_with_table();
    let dir = tempfile::tempdir().unwrap();
    let mut env = fake.ecs_env(&fake.aws_credential_file(dir.path()));
    env.retain(|(k, _)| k != "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    env.push((
        "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
        "not-the-agent-token".into(),
    ));
    let conf = config(&emulator, "auth_method application_default", "");
    let server = start(&conf, &env);
    send(&server, "ecs-down", 1);
    let line = server.wait_log("could not resolve AWS credentials");
    assert!(
        line.contains(&format!(
            "ECS container credentials endpoint {} answered 401",
            fake.url("/ecs/credentials")
        )),
        "{line}"
    );
    assert!(!line.contains("ecs-secret-key"), "{line}");
    assert_eq!(fake.log()["sts"], json!([]));
    assert_eq!(emulator.count(PROJECT, DATASET, TABLE), 0);
}

/// Storage Write (gRPC) and load jobs (their own upload client) take their tokens from the
/// output's one credentials source, as insertAll does: the federated token reaches the
/// emulator over each, and a refused one (UNAUTHENTICATED, HTTP 401) is replaced.
#[test]
fn storage_write_and_load_jobs_carry_the_federated_token_and_replace_a_refused_one() {
    let fake = FakeAuth::start(&[]);
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        TABLE,
        json!([{"name": "seq", "type": "INTEGER"}, {"name": "msg", "type": "STRING"}]),
    );
    set_token_policy(&emulator, json!({"refuse": ["sa-token-1"]}));
    let dir = tempfile::tempdir().unwrap();
    let env = fake.ecs_env(&fake.aws_credential_file(dir.path()));

    let storage = config(
        &emulator,
        "auth_method application_default",
        "retry_wait 0.5s",
    )
    .replace(
        "@type bigquery_insert",
        &format!(
            "@type bigquery_storage_write\n  storage_endpoint {}",
            emulator.grpc_endpoint()
        ),
    );
    let server = start(&storage, &env);
    send(&server, "grpc", 5);
    assert_eq!(rows_landed(&emulator, 5), 5, "{}", server.log());
    assert_eq!(tokens_seen(&emulator), ["sa-token-1", "sa-token-2"]);
    drop(server);

    // A new process federates again (sa-token-3); BigQuery refuses that one too.
    set_token_policy(
        &emulator,
        json!({"refuse": ["sa-token-1", "sa-token-2", "sa-token-3"]}),
    );
    // A chunk retry would come only after a minute: rows landing sooner were uploaded again
    // at once with a new token.
    let load = config(
        &emulator,
        "auth_method application_default",
        "path {dir}/buffer\n    retry_wait 60s",
    )
    .replace(
        "@type bigquery_insert",
        "@type bigquery_load\n  wait_job_interval 0.2",
    );
    let server = start(&load, &env);
    send(&server, "load", 5);
    assert_eq!(rows_landed(&emulator, 10), 10, "{}", server.log());
    assert_eq!(
        tokens_seen(&emulator),
        ["sa-token-1", "sa-token-2", "sa-token-3", "sa-token-4"]
    );
    let log = fake.log();
    assert_eq!(log["errors"], json!([]), "{log}");
}
