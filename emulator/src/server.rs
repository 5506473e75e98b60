// Owns sockets: the accept loop, HTTP/1.1 connections, per-request debug logs, and closing a
// connection unanswered when the fault layer asks. Must not route or interpret BigQuery requests.

use std::time::Instant;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::routes::{DropConnection, log_request};

#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct Dropped;

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let router = router.clone();
                async move {
                    let started = Instant::now();
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let resp = match router.oneshot(req.map(axum::body::Body::new)).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    };
                    if resp.extensions().get::<DropConnection>().is_some() {
                        log_request(&method, &path, 0, started);
                        return Err(Dropped);
                    }
                    log_request(&method, &path, resp.status().as_u16(), started);
                    Ok::<_, Dropped>(resp)
                }
            });
            // A client that closes its side once it has sent a request (a client killed, or
            // one that timed out, while it waits for the answer) still has that request
            // carried out, as BigQuery does with a request it received in full: without
            // half-close, hyper ends the connection at that EOF and drops the request's
            // handler wherever it is (a multipart upload dropped before or after its job was
            // made, at random).
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        });
    }
}
