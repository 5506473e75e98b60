//! The monitoring endpoint (fluent-plugin-prometheus's `<source> @type prometheus`):
//! `/metrics`, `/healthz`, `/readyz`, `/api/plugins.json`; and the client `bqforward health`
//! uses. Serves GETs only and reads nothing but the request head.
//!
//! hyper (HTTP/1.1 only) because it is already in the dependency tree through reqwest and the
//! emulator: a hand-written parser would be less code to compile but more to get right
//! (pipelining, slow clients, keep-alive from Prometheus's scraper).

use super::Metrics;
use crate::config::{ConfigError, Section};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// fluent-plugin-prometheus's default port.
pub const DEFAULT_PORT: u16 = 24231;
/// Where the endpoint listens when no `<source> @type prometheus` says: local only, so the
/// health check and a sidecar scraper work without exposing anything.
pub const DEFAULT_BIND: &str = "127.0.0.1";
pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:24231/readyz";

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    pub bind: String,
    pub port: u16,
    pub metrics_path: String,
    pub aggregated_metrics_path: String,
    pub gzip: bool,
    /// From a `<source>`: failing to bind fails start-up. The default endpoint only warns.
    pub configured: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.into(),
            port: DEFAULT_PORT,
            metrics_path: "/metrics".into(),
            aggregated_metrics_path: "/aggregated_metrics".into(),
            gzip: false,
            configured: false,
        }
    }
}

impl EndpointConfig {
    /// `<source> @type prometheus` (in_prometheus.rb: bind 0.0.0.0, port 24231,
    /// metrics_path /metrics, aggregated_metrics_path, content_encoding).
    pub fn from_config(s: &Section<'_>) -> Result<(Self, Vec<String>), ConfigError> {
        for unsupported in ["ssl", "transport"] {
            if let Some(section) = s.section(unsupported)? {
                return Err(ConfigError::at(
                    &section.location,
                    format!(
                        "<{unsupported}> in <source> @type prometheus is not supported by bqforward; serve metrics over plain HTTP"
                    ),
                ));
            }
        }
        let path = |key: &str, default: &str| -> Result<String, ConfigError> {
            let value = s.string(key, default);
            if value.starts_with('/') {
                Ok(value)
            } else {
                Err(ConfigError::at(
                    s.location(),
                    format!("{key} must start with '/'"),
                ))
            }
        };
        let config = Self {
            bind: s
                .string("bind", "0.0.0.0")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: s.int("port")?.unwrap_or(DEFAULT_PORT),
            metrics_path: path("metrics_path", "/metrics")?,
            aggregated_metrics_path: path("aggregated_metrics_path", "/aggregated_metrics")?,
            gzip: s.one_of("content_encoding", &["identity", "gzip"])? == Some("gzip"),
            configured: true,
        };
        Ok((config, s.finish(&[])?))
    }

    pub fn describe(&self) -> String {
        format!(
            "prometheus http {}:{}{}",
            self.bind, self.port, self.metrics_path
        )
    }
}

pub struct Endpoint {
    listener: TcpListener,
    config: Arc<EndpointConfig>,
}

impl Endpoint {
    pub async fn bind(config: EndpointConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind((config.bind.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            config: Arc::new(config),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`; a scrape under way is abandoned.
    pub async fn serve(self, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let metrics = Arc::clone(&metrics);
                        let config = Arc::clone(&self.config);
                        let service = hyper::service::service_fn(move |req| {
                            let answer = respond(&req, &metrics, &config);
                            async move { Ok::<_, std::convert::Infallible>(answer) }
                        });
                        connections.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.abort_all();
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    config: &EndpointConfig,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let path = req.uri().path();
    if path == config.metrics_path || path == config.aggregated_metrics_path {
        return exposition(metrics.render(), config.gzip && accepts_gzip(req));
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match metrics.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/api/plugins.json" => {
            let body = metrics.plugins_json().to_string();
            with_type(StatusCode::OK, "application/json", Bytes::from(body))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"))
}

fn exposition(body: String, gzip: bool) -> Response<Full<Bytes>> {
    const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if encoder.write_all(body.as_bytes()).is_ok()
            && let Ok(compressed) = encoder.finish()
        {
            let mut response = with_type(StatusCode::OK, CONTENT_TYPE, Bytes::from(compressed));
            response.headers_mut().insert(
                hyper::header::CONTENT_ENCODING,
                hyper::header::HeaderValue::from_static("gzip"),
            );
            return response;
        }
    }
    with_type(StatusCode::OK, CONTENT_TYPE, Bytes::from(body))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", Bytes::from(body))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not an http:// URL: {0}")]
    Url(String),
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: no HTTP status in the answer")]
    Answer { url: String },
}

/// `bqforward health`: GETs `url` (plain HTTP) and returns the status and body. A blocking
/// std client so the command needs no runtime, and images need no curl.
pub fn probe(url: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::Url(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let io = |source| ProbeError::Io {
        url: url.into(),
        source,
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ProbeError::Url(url.into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProbeError::Answer { url: url.into() })?;
    Ok((status, body.trim().to_owned()))
}
