//! fluent-plugin-bigquery's default `auth_method private_key`: a P12 service-account key (the
//! legacy format the Cloud console still offers). Tokens come as the plugin gets them (Ruby's
//! Signet): a JWT signed with the key, exchanged at Google's OAuth token endpoint (RFC 7523).
//! Not google-cloud-auth's self-signed JWTs: those must name the key's ID, which a P12 file
//! does not hold. Owns the exchange and its cache; no BigQuery calls.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p12_keystore::{KeyStore, Pkcs12ImportPolicy};
use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The password Google sets on every P12 key it issues.
pub const GOOGLE_P12_PASSWORD: &str = "notasecret";
/// Google's OAuth token endpoint; `BQFORWARD_P12_TOKEN_URI` points elsewhere (a private
/// endpoint, a test's stand-in).
const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A token is replaced this long before it expires (Google's libraries use 4 to 5 minutes).
const REFRESH_AHEAD: Duration = Duration::from_secs(240);
const ATTEMPTS: u32 = 3;

/// The key of a P12 file, ready to sign; checked when read (`check`).
pub struct P12Key {
    email: String,
    key: Arc<dyn SigningKey>,
}

impl P12Key {
    /// Opens the P12 file at `path` with `passphrase` and loads its private key for `email`.
    pub fn read(email: &str, path: &Path, passphrase: &str) -> Result<Self, String> {
        let shown = path.display();
        let convert = format!(
            "or convert it once: `openssl pkcs12 -legacy -in {shown} -nocerts -nodes -passin pass:{GOOGLE_P12_PASSWORD} | openssl pkcs8 -topk8 -nocrypt` gives the PEM key; put it with client_email, project_id and private_key_id (gcloud iam service-accounts keys list --iam-account {email}) in a JSON key and use auth_method json_key with json_key PATH"
        );
        let data = std::fs::read(path).map_err(|e| format!("private_key_path {shown}: {e}"))?;
        let store = KeyStore::from_pkcs12(&data, passphrase, Pkcs12ImportPolicy::Relaxed)
            .map_err(|e| format!("private_key_path {shown} is not a P12 key that opens with private_key_passphrase ({e}); {convert}"))?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| format!("private_key_path {shown} holds no private key; {convert}"))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
        let key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| {
                format!("private_key_path {shown}: the key cannot sign ({e}); {convert}")
            })?;
        Ok(Self {
            email: email.to_owned(),
            key,
        })
    }

    /// The RS256 JWT asking for `scope`, for the token endpoint `audience`.
    fn assertion(&self, scope: &str, audience: &str) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": self.email, "scope": scope, "aud": audience, "iat": now, "exp": now + 3600,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .ok_or("the P12 key is not an RSA key")?;
        let signature = signer
            .sign(signed.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// Tokens for one P12 key, cached until shortly before they expire.
pub struct P12Tokens {
    key: Arc<P12Key>,
    scope: String,
    uri: String,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl P12Tokens {
    pub fn new(key: Arc<P12Key>, scope: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            key,
            scope: scope.to_owned(),
            uri: token_uri(),
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    pub async fn token(&self) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        let answer = loop {
            match self.exchange().await {
                Ok(answer) => break answer,
                Err((error, transient)) if !transient || attempt >= ATTEMPTS => {
                    return Err(error);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        };
        let lifetime = Duration::from_secs(answer.expires_in);
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_AHEAD);
        *cached = Some((answer.access_token.clone(), refresh_at));
        Ok(answer.access_token)
    }

    /// One exchange; `Err((why, transient))`.
    async fn exchange(&self) -> Result<TokenAnswer, (String, bool)> {
        let step = format!("exchanging the P12 key's JWT at {}", self.uri);
        let assertion = self
            .key
            .assertion(&self.scope, &self.uri)
            .map_err(|e| (format!("{step}: {e}"), false))?;
        let response = self
            .http
            .post(&self.uri)
            .form(&[
                ("grant_type", GRANT_TYPE),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| (format!("{step}: {e}"), true))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            // Google's error answers name the problem (invalid_grant, ...), never the key.
            let transient = status.is_server_error() || status.as_u16() == 429;
            return Err((format!("{step}: {status}: {body}"), transient));
        }
        serde_json::from_str(&body).map_err(|e| (format!("{step}: unreadable answer: {e}"), false))
    }
}

fn token_uri() -> String {
    std::env::var("BQFORWARD_P12_TOKEN_URI")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| TOKEN_URI.to_owned())
}

/// For `check`: where the tokens come from.
pub fn token_uri_description() -> String {
    match std::env::var("BQFORWARD_P12_TOKEN_URI") {
        Ok(uri) if !uri.is_empty() => format!("{uri} (BQFORWARD_P12_TOKEN_URI)"),
        _ => TOKEN_URI.to_owned(),
    }
}
