//! Google credentials for the BigQuery outputs: one source per output, shared by the REST
//! client (gcp-bigquery-client's `Authenticator`) and the Storage Write gRPC client
//! (`token()` / `authorization()`). Files are read and checked at start-up (`check`); tokens
//! come from google-cloud-auth, which refreshes them before they expire. No BigQuery calls.
//!
//! Every credential file type Google's libraries read is accepted (`service_account`,
//! `authorized_user`, `external_account` with aws / file / url / executable sources,
//! `impersonated_service_account`, `external_account_authorized_user`), plus the metadata
//! server. On ECS the AWS task role's keys come from the container credentials endpoint,
//! which google-cloud-auth does not read: `ecs` serves them to it (see there). P12 keys (the
//! plugin's default `private_key`) get tokens as the plugin does: `p12`.
//!
//! For another client (the Storage Write gRPC one): take `Connection::credentials`, send
//! `authorization()` as the `authorization` metadata, read `generation()` before a call and
//! call `refused(generation)` when it ends UNAUTHENTICATED, then retry once.

mod ecs;
mod p12;

pub use p12::GOOGLE_P12_PASSWORD;

use google_cloud_auth::credentials::{
    AccessTokenCredentials, external_account, external_account_authorized_user, impersonated, mds,
    service_account, user_account,
};
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::{AlwaysRetry, RetryPolicyExt};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the plugin's `auth_method` asks for credentials. No `Debug`: it may hold a passphrase.
#[derive(Clone, PartialEq)]
pub enum AuthMethod {
    /// No credentials (a local BigQuery such as the repo's bigquery-emulator).
    None,
    /// A service-account key: a file path or the key's JSON itself (as the plugin accepts).
    JsonKey(String),
    /// Application default credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, else
    /// the metadata server.
    ApplicationDefault,
    /// The GCE / GKE metadata server (workload identity).
    ComputeEngine,
    /// The plugin's default: a P12 key (`private_key_path`) for `email`.
    PrivateKey {
        email: String,
        path: String,
        passphrase: String,
    },
}

/// The token sent when `auth_method none`: a local BigQuery takes any.
pub const NO_AUTH_TOKEN: &str = "bqforward-no-auth";

const SCOPES: [&str; 1] = ["https://www.googleapis.com/auth/cloud-platform"];
/// Attempts per token fetch (STS, impersonation, metadata server), with backoff between.
const TOKEN_ATTEMPTS: u32 = 3;

/// A token could not be had; says which credentials and which step failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Google credentials ({credentials}): {detail}")]
pub struct TokenError {
    credentials: String,
    detail: String,
}

/// What to build the token source from, decided and checked at start-up.
enum Plan {
    Fixed,
    Metadata,
    File { kind: Kind, json: Value },
    P12(Arc<p12::P12Key>),
}

/// A built token source; cheap to clone.
#[derive(Clone)]
enum Source {
    Google(AccessTokenCredentials),
    P12(Arc<p12::P12Tokens>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    ServiceAccount,
    AuthorizedUser,
    ExternalAccount,
    ExternalAccountAws,
    ExternalAccountAwsEcs,
    Impersonated,
    ExternalAuthorizedUser,
}

/// One output's credentials. Cheap to share (`Arc`); tokens are fetched on first use.
pub struct Credentials {
    plan: Plan,
    description: String,
    built: tokio::sync::Mutex<Option<Source>>,
    generation: AtomicU64,
    ecs: tokio::sync::OnceCell<ecs::Relay>,
}

impl Credentials {
    /// Reads and checks what `method` names (files, their type and fields), without any network
    /// call, so a bad file is an error at `check`.
    pub fn new(method: &AuthMethod) -> Result<Self, String> {
        // google-cloud-auth's HTTPS client uses the process's rustls provider; bqforward's is
        // ring (as for its TLS listener). Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (plan, description) = match method {
            AuthMethod::None => (
                Plan::Fixed,
                "none (a fixed token for a local BigQuery)".into(),
            ),
            AuthMethod::ComputeEngine => (Plan::Metadata, metadata_description()),
            AuthMethod::JsonKey(key) if key.trim_start().starts_with('{') => {
                let json = parse_json(key, "json_key")?;
                file_plan(json, "json_key (inline JSON)")?
            }
            AuthMethod::JsonKey(path) => {
                let json = read_json(Path::new(path))?;
                file_plan(json, &format!("json_key {path}"))?
            }
            AuthMethod::ApplicationDefault => match adc_file()? {
                Some((path, origin)) => file_plan(read_json(&path)?, &origin)?,
                None => (
                    Plan::Metadata,
                    format!(
                        "{} (application_default: no GOOGLE_APPLICATION_CREDENTIALS and no gcloud file)",
                        metadata_description()
                    ),
                ),
            },
            AuthMethod::PrivateKey {
                email,
                path,
                passphrase,
            } => {
                let key = p12::P12Key::read(email, Path::new(path), passphrase)?;
                (
                    Plan::P12(Arc::new(key)),
                    format!(
                        "service_account {email} from the P12 key {path} (private_key; tokens from {})",
                        p12::token_uri_description()
                    ),
                )
            }
        };
        Ok(Self {
            plan,
            description,
            built: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            ecs: tokio::sync::OnceCell::new(),
        })
    }

    /// Which credential type was found and where (for `check` and logs; never secrets).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// A current access token: cached, refreshed before it expires.
    pub async fn token(&self) -> Result<String, TokenError> {
        if let Plan::Fixed = self.plan {
            return Ok(NO_AUTH_TOKEN.into());
        }
        match self.source().await? {
            Source::Google(source) => source
                .access_token()
                .await
                .map(|t| t.token)
                .map_err(|e| self.error(chain(&e))),
            Source::P12(tokens) => tokens.token().await.map_err(|e| self.error(e)),
        }
    }

    /// The `authorization` header value (`Bearer TOKEN`), for gRPC metadata.
    pub async fn authorization(&self) -> Result<String, TokenError> {
        Ok(format!("Bearer {}", self.token().await?))
    }

    /// Changes each time the cached token is thrown away; read it before a request so that
    /// `refused` after a 401 drops only the token that request carried.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// BigQuery answered 401 to a request sent at `generation`: the next `token()` fetches a
    /// new token instead of the cached one. Many requests refused together refresh once.
    pub async fn refused(&self, generation: u64) {
        let mut built = self.built.lock().await;
        if self
            .generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            *built = None;
            tracing::warn!(credentials = %self.description, "BigQuery refused the access token (401): fetching a new one");
        }
    }

    async fn source(&self) -> Result<Source, TokenError> {
        let mut built = self.built.lock().await;
        if let Some(source) = built.as_ref() {
            return Ok(source.clone());
        }
        let source = self.build().await?;
        *built = Some(source.clone());
        Ok(source)
    }

    async fn build(&self) -> Result<Source, TokenError> {
        if let Plan::P12(key) = &self.plan {
            let tokens = p12::P12Tokens::new(Arc::clone(key), &SCOPES.join(" "))
                .map_err(|e| self.error(e))?;
            return Ok(Source::P12(Arc::new(tokens)));
        }
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_delay(Duration::from_millis(500))
            .with_maximum_delay(Duration::from_secs(5))
            .build()
            .map_err(|e| self.error(e.to_string()))?;
        let retry = AlwaysRetry.with_attempt_limit(TOKEN_ATTEMPTS);
        let built = match &self.plan {
            Plan::Fixed | Plan::P12(_) => {
                return Err(self.error("no google-cloud-auth source for this method".into()));
            }
            Plan::Metadata => mds::Builder::default()
                .with_scopes(SCOPES)
                .with_retry_policy(retry)
                .with_backoff_policy(backoff)
                .build_access_token_credentials(),
            Plan::File { kind, json } => {
                let json = json.clone();
                match kind {
                    Kind::ServiceAccount => service_account::Builder::new(json)
                        .with_access_specifier(service_account::AccessSpecifier::from_scopes(
                            SCOPES,
                        ))
                        .build_access_token_credentials(),
                    Kind::AuthorizedUser => user_account::Builder::new(json)
                        .with_scopes(SCOPES)
                        .with_retry_policy(retry)
                        .with_backoff_policy(backoff)
                        .build_access_token_credentials(),
                    Kind::ExternalAccount => external(json, retry, backoff),
                    Kind::ExternalAccountAws => {
                        external(ecs::imds_only_when_needed(json), retry, backoff)
                    }
                    Kind::ExternalAccountAwsEcs => {
                        let relay = self
                            .ecs
                            .get_or_try_init(ecs::Relay::start)
                            .await
                            .map_err(|e| self.error(format!("ECS credentials relay: {e}")))?;
                        external(relay.rewrite(json), retry, backoff)
                    }
                    Kind::Impersonated => impersonated::Builder::new(json)
                        .with_scopes(SCOPES)
                        .with_retry_policy(retry)
                        .with_backoff_policy(backoff)
                        .build_access_token_credentials(),
                    Kind::ExternalAuthorizedUser => {
                        external_account_authorized_user::Builder::new(json)
                            .with_retry_policy(retry)
                            .with_backoff_policy(backoff)
                            .build_access_token_credentials()
                    }
                }
            }
        };
        built.map(Source::Google).map_err(|e| self.error(chain(&e)))
    }

    fn error(&self, detail: String) -> TokenError {
        TokenError {
            credentials: self.description.clone(),
            detail,
        }
    }
}

fn external(
    json: Value,
    retry: impl Into<google_cloud_gax::retry_policy::RetryPolicyArg>,
    backoff: impl Into<google_cloud_gax::backoff_policy::BackoffPolicyArg>,
) -> Result<AccessTokenCredentials, google_cloud_auth::build_errors::Error> {
    external_account::Builder::new(json)
        .with_scopes(SCOPES)
        .with_retry_policy(retry)
        .with_backoff_policy(backoff)
        .build_access_token_credentials()
}

/// The error and its causes on one line: google-cloud-auth puts the failing step ("failed to
/// exchange token", the HTTP status and body) in the sources.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn metadata_description() -> String {
    match std::env::var("GCE_METADATA_HOST") {
        Ok(host) => format!("compute_engine: the metadata server at {host} (GCE_METADATA_HOST)"),
        Err(_) => "compute_engine: the GCE / GKE metadata server".into(),
    }
}

/// GOOGLE_APPLICATION_CREDENTIALS, else gcloud's application-default file when it exists.
fn adc_file() -> Result<Option<(PathBuf, String)>, String> {
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
        && !path.is_empty()
    {
        let path = PathBuf::from(path);
        let origin = format!("GOOGLE_APPLICATION_CREDENTIALS={}", path.display());
        return Ok(Some((path, origin)));
    }
    let config = match std::env::var_os("CLOUDSDK_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".config").join("gcloud"),
            None => return Ok(None),
        },
    };
    let path = config.join("application_default_credentials.json");
    if path.is_file() {
        let origin = format!("gcloud's file {}", path.display());
        return Ok(Some((path, origin)));
    }
    Ok(None)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("credential file {}: {e}", path.display()))?;
    parse_json(&text, &format!("credential file {}", path.display()))
}

fn parse_json(text: &str, what: &str) -> Result<Value, String> {
    // serde_json's message names the line and column, never the content.
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

/// The file's type and the fields its builder needs, checked now; `origin` says where it came
/// from.
fn file_plan(json: Value, origin: &str) -> Result<(Plan, String), String> {
    let at = |detail: String| format!("{origin}: {detail}");
    let kind_name = json
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| at("no \"type\" field: not a Google credential file".into()))?
        .to_owned();
    let need = |fields: &[&str]| -> Result<(), String> {
        let missing: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| {
                json.get(*f)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(at(format!("{kind_name} needs {}", missing.join(", "))))
        }
    };
    // Fields google-cloud-auth reads that may be empty (a key converted from P12 has no ID).
    let present = |fields: &[&str]| -> Result<(), String> {
        match fields
            .iter()
            .find(|f| json.get(**f).and_then(Value::as_str).is_none())
        {
            Some(field) => Err(at(format!("{kind_name} needs {field}"))),
            None => Ok(()),
        }
    };
    let text = |field: &str| json.get(field).and_then(Value::as_str).unwrap_or("");
    let (kind, detail) = match kind_name.as_str() {
        "service_account" => {
            need(&["client_email", "private_key"])?;
            present(&["private_key_id", "project_id"])?;
            check_private_key(text("private_key")).map_err(at)?;
            (Kind::ServiceAccount, text("client_email").to_owned())
        }
        "authorized_user" => {
            need(&["client_id", "client_secret", "refresh_token"])?;
            (Kind::AuthorizedUser, "a gcloud user login".into())
        }
        "impersonated_service_account" => {
            need(&["service_account_impersonation_url"])?;
            if !json.get("source_credentials").is_some_and(Value::is_object) {
                return Err(at(
                    "impersonated_service_account needs source_credentials".into()
                ));
            }
            (
                Kind::Impersonated,
                format!("impersonates {}", impersonated_email(&json)),
            )
        }
        "external_account_authorized_user" => {
            need(&["audience", "refresh_token", "token_url"])?;
            (Kind::ExternalAuthorizedUser, "workforce identity".into())
        }
        "external_account" => external_plan(&json, &need)?,
        other => {
            return Err(at(format!(
                "type {other:?} is not a credential type bqforward reads (service_account, authorized_user, external_account, impersonated_service_account, external_account_authorized_user)"
            )));
        }
    };
    Ok((
        Plan::File { kind, json },
        format!("{kind_name} ({detail}) from {origin}"),
    ))
}

/// The key must be PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"), as Google issues them.
fn check_private_key(pem: &str) -> Result<(), String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        // Loaded as google-cloud-auth will sign with it (through the process's provider).
        Ok(key @ PrivateKeyDer::Pkcs8(_)) => rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .map(|_| ())
            .map_err(|e| format!("private_key cannot sign: {e}")),
        Ok(_) => Err("private_key is not PKCS#8 (-----BEGIN PRIVATE KEY-----)".into()),
        // The error names the PEM problem, never the key.
        Err(e) => Err(format!("private_key is not a PEM private key: {e}")),
    }
}

fn external_plan(
    json: &Value,
    need: &dyn Fn(&[&str]) -> Result<(), String>,
) -> Result<(Kind, String), String> {
    need(&["audience", "subject_token_type"])?;
    let source = json
        .get("credential_source")
        .filter(|s| s.is_object())
        .ok_or("external_account needs credential_source (or use a supplier: not in a file)")?;
    let field = |name: &str| source.get(name).and_then(Value::as_str);
    let impersonation = match json
        .get("service_account_impersonation_url")
        .and_then(Value::as_str)
    {
        Some(_) => format!(", impersonates {}", impersonated_email(json)),
        None => String::new(),
    };
    let (kind, from) = if field("environment_id").is_some_and(|e| e.starts_with("aws")) {
        if ecs::keys_in_environment() {
            (
                Kind::ExternalAccountAws,
                "aws: keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".to_owned(),
            )
        } else if let Some(endpoint) = ecs::endpoint_description() {
            if !ecs::region_in_environment() {
                return Err("external_account (aws) on ECS needs AWS_REGION or AWS_DEFAULT_REGION in the task's environment (ECS has no metadata server for the region)".into());
            }
            (
                Kind::ExternalAccountAwsEcs,
                format!("aws: ECS task role from the container credentials endpoint {endpoint}"),
            )
        } else {
            let url = field("url").unwrap_or("no url");
            (
                Kind::ExternalAccountAws,
                format!("aws: instance role from the metadata server {url}"),
            )
        }
    } else if let Some(file) = field("file") {
        (Kind::ExternalAccount, format!("subject token file {file}"))
    } else if let Some(url) = field("url") {
        (Kind::ExternalAccount, format!("subject token URL {url}"))
    } else if source.get("executable").is_some() {
        (
            Kind::ExternalAccount,
            "subject token from an executable (GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 needed)"
                .to_owned(),
        )
    } else {
        return Err(
            "credential_source has none of environment_id (aws), file, url, executable".into(),
        );
    };
    let sts = json
        .get("token_url")
        .and_then(Value::as_str)
        .unwrap_or("https://sts.googleapis.com/v1/token");
    Ok((kind, format!("{from}; STS {sts}{impersonation}")))
}

/// The service account an impersonation URL names (…/serviceAccounts/EMAIL:generateAccessToken).
fn impersonated_email(json: &Value) -> String {
    json.get("service_account_impersonation_url")
        .and_then(Value::as_str)
        .and_then(|url| url.rsplit_once("/serviceAccounts/"))
        .map(|(_, rest)| rest.split(':').next().unwrap_or(rest).to_owned())
        .unwrap_or_else(|| "a service account".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(json: Value) -> Result<String, String> {
        file_plan(json, "test.json").map(|(_, description)| description)
    }

    #[test]
    fn each_file_type_is_named_with_its_origin_and_no_secret() {
        let pem =
            include_str!("../../../tests/fixtures/credentials/test-only-service-account.json");
        let mut key: Value = serde_json::from_str(pem).unwrap_or_default();
        key["client_email"] = "sa@p.iam.gserviceaccount.com".into();
        let described = plan(key).unwrap_or_default();
        assert!(
            described.contains("service_account (sa@p.iam.gserviceaccount.com) from test.json"),
            "{described}"
        );
        assert!(!described.contains("PRIVATE KEY"));
        let user = json!({"type": "authorized_user", "client_id": "id", "client_secret": "SECRET", "refresh_token": "SECRET"});
        let described = plan(user).unwrap_or_default();
        assert!(described.starts_with("authorized_user"), "{described}");
        assert!(!described.contains("SECRET"));
        let file = json!({"type": "external_account", "audience": "//iam/x", "subject_token_type": "jwt",
            "credential_source": {"file": "/var/run/token"},
            "service_account_impersonation_url": "https://iam/v1/projects/-/serviceAccounts/w@p.iam.gserviceaccount.com:generateAccessToken"});
        let described = plan(file).unwrap_or_default();
        assert!(
            described.contains("subject token file /var/run/token"),
            "{described}"
        );
        assert!(
            described.contains("impersonates w@p.iam.gserviceaccount.com"),
            "{described}"
        );
    }

    #[test]
    fn a_bad_file_says_what_is_wrong() {
        let no_type = plan(json!({"client_email": "x"})).unwrap_err();
        assert!(no_type.contains("no \"type\""), "{no_type}");
        let missing = plan(json!({"type": "service_account", "client_email": "x"})).unwrap_err();
        assert!(
            missing.contains("service_account needs private_key"),
            "{missing}"
        );
        let bad_key = plan(json!({"type": "service_account", "client_email": "x", "private_key_id": "",
            "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n"}))
        .unwrap_err();
        assert!(bad_key.contains("private_key cannot sign"), "{bad_key}");
        assert!(!bad_key.contains("SECRET"), "{bad_key}");
        let unknown = plan(json!({"type": "gdch_service_account"})).unwrap_err();
        assert!(unknown.contains("not a credential type"), "{unknown}");
        let no_source =
            plan(json!({"type": "external_account", "audience": "a", "subject_token_type": "t"}))
                .unwrap_err();
        assert!(no_source.contains("credential_source"), "{no_source}");
        let not_json = parse_json("{\"type\": ", "credential file x").unwrap_err();
        assert!(
            not_json.contains("credential file x is not JSON"),
            "{not_json}"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_dropped_once_for_many_requests() {
        let credentials = Credentials::new(&AuthMethod::None).map_err(|e| e.to_string());
        let Ok(credentials) = credentials else {
            panic!("auth_method none always builds")
        };
        let seen = credentials.generation();
        credentials.refused(seen).await;
        credentials.refused(seen).await;
        assert_eq!(credentials.generation(), seen + 1);
        assert_eq!(
            credentials.token().await.ok().as_deref(),
            Some(NO_AUTH_TOKEN)
        );
    }
}
