// Owns the Storage Write API's socket side: the accept loop, plaintext HTTP/2 (h2c) connections
// serving `BigQueryWrite`, and closing one connection when a fault asks. Must not decide any
// request: that is `service` (RPCs), `append` (AppendRows) and `proto_rows` (row decoding).

mod append;
mod errors;
mod names;
mod service;

use bq_storage_proto::server::big_query_write_server::BigQueryWriteServer;
use bq_storage_proto::tonic::codegen::Service;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Put in every request's extensions: cancelling it closes the connection the request came on,
/// which is how a "dropped stream" fault loses an answer.
#[derive(Clone, Debug)]
pub struct ConnectionKill(CancellationToken);

/// Largest message the transport decodes. Above the request limit (10 MB by default) so that an
/// oversized AppendRows request reaches the service and gets BigQuery's own answer.
fn max_message(request_limit: usize) -> usize {
    request_limit.saturating_mul(2).max(64 << 20)
}

/// Serves `BigQueryWrite` until `shutdown` is cancelled, then closes every connection.
pub async fn serve(listener: TcpListener, app: AppState, shutdown: CancellationToken) {
    let limit = max_message(app.limits.max_request_bytes);
    let service = BigQueryWriteServer::new(service::WriteService::new(app))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "grpc accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let kill = shutdown.child_token();
        let service = service.clone();
        let marker = ConnectionKill(kill.clone());
        let per_request = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(marker.clone());
            let mut service = service.clone();
            service.call(req)
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(per_request));
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "grpc connection closed");
                    }
                }
                () = kill.cancelled() => {
                    tracing::debug!(%peer, "grpc connection dropped");
                }
            }
        });
    }
}
