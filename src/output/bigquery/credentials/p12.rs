//! fluent-plugin-bigquery's default `auth_method private_key`: a P12 service-account key
//! (the legacy format the Cloud console still offers) read into the same service-account
//! credentials a JSON key gives. Reads the file only; no network.

use base64::Engine as _;
use p12_keystore::{KeyStore, Pkcs12ImportPolicy};
use serde_json::{Value, json};
use std::path::Path;

/// The password Google sets on every P12 key it issues.
pub const GOOGLE_P12_PASSWORD: &str = "notasecret";

/// A service-account key (as JSON key files have it) for `email` from the P12 file at `path`.
pub fn service_account_json(email: &str, path: &Path, passphrase: &str) -> Result<Value, String> {
    let shown = path.display();
    let convert = format!(
        "or convert it once: `openssl pkcs12 -legacy -in {shown} -nocerts -nodes -passin pass:{GOOGLE_P12_PASSWORD} | openssl pkcs8 -topk8 -nocrypt` gives the PEM key; put it with client_email in a JSON key and use auth_method json_key with json_key PATH"
    );
    let data = std::fs::read(path).map_err(|e| format!("private_key_path {shown}: {e}"))?;
    let store = KeyStore::from_pkcs12(&data, passphrase, Pkcs12ImportPolicy::Relaxed)
        .map_err(|e| format!("private_key_path {shown} is not a P12 key that opens with private_key_passphrase ({e}); {convert}"))?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| format!("private_key_path {shown} holds no private key; {convert}"))?;
    let der = chain.key().as_der();
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(json!({
        "type": "service_account",
        "client_email": email,
        // A P12 file does not say which of the account's keys it is; the token's `kid` is then
        // empty (docs/security.md says what to do if Google refuses such tokens).
        "private_key_id": "",
        "private_key": pem,
        "project_id": project_of(email),
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
}

/// `PROJECT` in `NAME@PROJECT.iam.gserviceaccount.com`; empty for other addresses.
fn project_of(email: &str) -> &str {
    email
        .split_once('@')
        .and_then(|(_, domain)| domain.strip_suffix(".iam.gserviceaccount.com"))
        .unwrap_or("")
}
