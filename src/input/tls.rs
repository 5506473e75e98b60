//! `<transport tls>` for the forward input, with fluentd's parameter names, on rustls: the
//! server certificate and key (PEM), optional client certificate verification against
//! `ca_path`, and the allowed protocol versions. Builds the acceptor once at start-up.

use crate::config::{ConfigError, Element, Section};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier};

fn version(name: &str) -> Option<&'static rustls::SupportedProtocolVersion> {
    match name {
        "TLSv1_2" | "TLS1_2" | "TLSv1.2" => Some(&rustls::version::TLS12),
        "TLSv1_3" | "TLS1_3" | "TLSv1.3" => Some(&rustls::version::TLS13),
        _ => None,
    }
}

/// The acceptor for a `<transport>` section, `None` for `<transport tcp>`.
pub fn from_config(element: &Element) -> Result<(Option<TlsAcceptor>, Vec<String>), ConfigError> {
    let s = Section::new(element);
    match element.arg.trim() {
        "" | "tcp" => {
            let warnings = s.finish(&[])?;
            return Ok((None, warnings));
        }
        "tls" => {}
        other => {
            return Err(ConfigError::at(
                &element.location,
                format!("<transport {other}> is not supported (supported: tcp, tls)"),
            ));
        }
    }
    let at = |message: String| ConfigError::at(&element.location, message);
    if s.str("private_key_passphrase")
        .is_some_and(|p| !p.is_empty())
    {
        return Err(at(
            "encrypted private keys are not supported: decrypt it (openssl pkey -in key.pem -out plain.pem) and drop private_key_passphrase".into(),
        ));
    }
    let cert_path = s.str("cert_path").ok_or_else(|| {
        at("<transport tls> needs cert_path (bqforward does not generate certificates)".into())
    })?;
    let key_path = s
        .str("private_key_path")
        .ok_or_else(|| at("<transport tls> needs private_key_path".into()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| at(format!("cert_path {cert_path}: {e}")))?;
    if certs.is_empty() {
        return Err(at(format!("cert_path {cert_path}: no certificate found")));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| at(format!("private_key_path {key_path}: {e}")))?;

    let (min, max) = match s.str("version") {
        Some(v) => (Some(v), Some(v)),
        None => (s.str("min_version"), s.str("max_version")),
    };
    let min = min.unwrap_or("TLSv1_2");
    let max = max.unwrap_or("TLSv1_3");
    let (Some(min_v), Some(max_v)) = (version(min), version(max)) else {
        return Err(at(format!(
            "TLS versions {min}..{max}: bqforward supports TLSv1_2 and TLSv1_3"
        )));
    };
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                let order = |x: &rustls::SupportedProtocolVersion| {
                    if x.version == rustls::ProtocolVersion::TLSv1_2 {
                        0
                    } else {
                        1
                    }
                };
                order(v) >= order(min_v) && order(v) <= order(max_v)
            })
            .collect();
    if versions.is_empty() {
        return Err(at(format!("min_version {min} is above max_version {max}")));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| at(format!("TLS: {e}")))?;
    let client_auth = s.bool("client_cert_auth")?.unwrap_or(false);
    let config = if client_auth {
        let ca_path = s.str("ca_path").ok_or_else(|| {
            at("client_cert_auth needs ca_path (the CA that signs client certificates)".into())
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_path)
            .map_err(|e| at(format!("ca_path {ca_path}: {e}")))?
        {
            let cert = cert.map_err(|e| at(format!("ca_path {ca_path}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| at(format!("ca_path {ca_path}: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| at(format!("client_cert_auth: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        let _ = s.str("ca_path");
        builder.with_no_client_auth()
    }
    .with_single_cert(certs, key)
    .map_err(|e| at(format!("certificate and key do not match: {e}")))?;
    let warnings = s.finish(&[
        "ciphers",
        "insecure",
        "cert_verifier",
        "ca_cert_path",
        "ca_private_key_path",
        "ca_private_key_passphrase",
        "generate_private_key_length",
        "generate_cert_country",
        "generate_cert_state",
        "generate_cert_locality",
        "generate_cert_common_name",
        "generate_cert_expiration",
        "generate_cert_digest",
        "cert_type",
        "cert_store_name",
        "cert_thumbprint",
        "cert_logical_store_name",
        "cert_find_type",
        "ensure_fips",
    ])?;
    Ok((Some(TlsAcceptor::from(Arc::new(config))), warnings))
}
