//! The ECS task role for google-cloud-auth's AWS source. ECS gives a task its role's keys at
//! the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI),
//! which google-cloud-auth does not read: it reads the environment or the EC2 metadata
//! server. The relay answers on loopback in the metadata server's shape (a role name, then
//! the keys under it) and the credential file's `url` is pointed at it, so signing, the STS
//! exchange, impersonation (at the URLs the file names), retries and caching all stay in
//! google-cloud-auth. It keeps no keys: each request fetches them afresh (ECS rotates them).
//!
//! Why not google-cloud-auth's programmatic source: it takes a finished subject token (we
//! would sign AWS requests ourselves) and only builds impersonation URLs on
//! iamcredentials.googleapis.com, ignoring the file's `service_account_impersonation_url`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Where ECS serves AWS_CONTAINER_CREDENTIALS_RELATIVE_URI.
const ECS_HOST: &str = "http://169.254.170.2";
/// The role name the relay answers (google-cloud-auth asks for one, then for its keys).
const ROLE: &str = "ecs-task-role";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// AWS keys in the environment come first, as in every AWS SDK.
pub fn keys_in_environment() -> bool {
    var("AWS_ACCESS_KEY_ID").is_some() && var("AWS_SECRET_ACCESS_KEY").is_some()
}

/// The region, from the environment (ECS sets AWS_REGION; there is no metadata server for it).
pub fn region_in_environment() -> bool {
    var("AWS_REGION").is_some() || var("AWS_DEFAULT_REGION").is_some()
}

/// With keys and region in the environment the metadata server is not asked for anything, so
/// no IMDSv2 session is opened either (google-cloud-auth opens one whenever the file names
/// `imdsv2_session_token_url`, and fails off EC2; Google's Python library skips it too).
pub fn imds_only_when_needed(mut json: Value) -> Value {
    if keys_in_environment()
        && region_in_environment()
        && let Some(source) = json
            .get_mut("credential_source")
            .and_then(Value::as_object_mut)
    {
        source.remove("imdsv2_session_token_url");
    }
    json
}

/// The container credentials endpoint, when this runs in an ECS task with a role.
fn endpoint() -> Option<String> {
    if let Some(relative) = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Some(format!("{ECS_HOST}{relative}"));
    }
    var("AWS_CONTAINER_CREDENTIALS_FULL_URI")
}

/// For `check`: the endpoint, with the variable it came from.
pub fn endpoint_description() -> Option<String> {
    if var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some() {
        return Some(format!(
            "{ECS_HOST} + AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
        ));
    }
    var("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .map(|full| format!("{full} (AWS_CONTAINER_CREDENTIALS_FULL_URI)"))
}

/// The Authorization header ECS asks for with a full URI (EKS Pod Identity does too): the
/// file is read each time, as the agent rotates it.
fn authorization() -> Result<Option<String>, String> {
    if let Some(path) = var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        let token = std::fs::read_to_string(&path)
            .map_err(|e| format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path}: {e}"))?;
        return Ok(Some(token.trim().to_owned()));
    }
    Ok(var("AWS_CONTAINER_AUTHORIZATION_TOKEN"))
}

/// The loopback stand-in for the metadata server's role endpoint; stops when dropped.
pub struct Relay {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    /// An unguessable first path segment: only this process knows the relay's URL.
    secret: String,
    endpoint: String,
    http: reqwest::Client,
}

impl Relay {
    pub async fn start() -> Result<Self, String> {
        let endpoint =
            endpoint().ok_or("no AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI")?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("bind 127.0.0.1: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(|e| format!("random: {e}"))?;
        let secret = bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let base = format!("http://{addr}/{secret}");
        let shared = Arc::new(Shared {
            secret,
            endpoint,
            http,
        });
        let task = tokio::spawn(serve(listener, shared));
        Ok(Self { base, task })
    }

    /// The credential file with its AWS metadata URL pointed at the relay.
    pub fn rewrite(&self, mut json: Value) -> Value {
        if let Some(source) = json
            .get_mut("credential_source")
            .and_then(Value::as_object_mut)
        {
            source.insert("url".into(), Value::String(self.base.clone()));
            // ECS has no IMDSv2 session; the relay needs none.
            source.remove("imdsv2_session_token_url");
        }
        json
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "ECS credentials relay: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let service = hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, std::convert::Infallible>(respond(&req, &shared).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/');
    let Some(rest) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(shared.secret.as_str()))
    else {
        return answer(StatusCode::NOT_FOUND, "not found".into());
    };
    match rest {
        "" => answer(StatusCode::OK, ROLE.into()),
        _ if rest.strip_prefix('/') == Some(ROLE) => match fetch(shared).await {
            Ok(keys) => answer(StatusCode::OK, keys),
            Err(error) => {
                tracing::warn!(%error, "ECS container credentials endpoint");
                answer(StatusCode::BAD_GATEWAY, error.into())
            }
        },
        _ => answer(StatusCode::NOT_FOUND, "not found".into()),
    }
}

/// The task role's keys (`AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`), as ECS
/// gives them.
async fn fetch(shared: &Shared) -> Result<Bytes, String> {
    let mut request = shared.http.get(&shared.endpoint);
    if let Some(token) = authorization()? {
        request = request.header(reqwest::header::AUTHORIZATION, token);
    }
    let response = request.send().await.map_err(|e| {
        format!(
            "ECS container credentials endpoint {}: {e}",
            shared.endpoint
        )
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "ECS container credentials endpoint {} answered {status}",
            shared.endpoint
        ));
    }
    Ok(body)
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
