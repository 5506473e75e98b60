//! bqforward: a Fluentd Forward protocol aggregator that streams logs into BigQuery.
//! This file wires the stages together; it is the only place that knows them all.

pub mod buffer;
pub mod codec;
pub mod config;
pub mod format;
pub mod input;
pub mod output;
pub mod pipeline;
pub mod router;

use input::forward::ForwardInput;
use pipeline::Pipeline;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{input}: cannot listen: {source}")]
    Bind {
        input: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the pipeline until `shutdown` is cancelled: binds every input first (so a busy port
/// fails start-up), serves, then stops accepting, lets connections finish what they have
/// read, and flushes the outputs for at most `shutdown_timeout`.
pub async fn run(
    pipeline: Pipeline,
    shutdown: CancellationToken,
    shutdown_timeout: std::time::Duration,
) -> Result<(), RunError> {
    let (inputs, router) = pipeline.into_router();
    let router = Arc::new(router);
    let mut bound = Vec::with_capacity(inputs.len());
    for config in inputs {
        let id = config.id.clone();
        let describe = config.describe();
        let input = ForwardInput::bind(config)
            .await
            .map_err(|source| RunError::Bind {
                input: id.clone(),
                source,
            })?;
        match input.local_addr() {
            Some(addr) => tracing::info!(input = %id, %addr, "listening ({describe})"),
            None => tracing::info!(input = %id, "listening ({describe})"),
        }
        bound.push(input);
    }
    let mut serving = JoinSet::new();
    for input in bound {
        serving.spawn(input.serve(Arc::clone(&router), shutdown.clone()));
    }
    shutdown.cancelled().await;
    tracing::info!("shutting down: no new connections, finishing messages in flight");
    while serving.join_next().await.is_some() {}
    let deadline = std::time::Instant::now() + shutdown_timeout;
    for output in router.outputs() {
        if let Err(err) = output.shutdown(deadline).await {
            tracing::error!(error = %err, "output did not flush at shutdown");
        }
    }
    tracing::info!("shutdown complete");
    Ok(())
}
