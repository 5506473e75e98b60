//! bqforward: a Fluentd Forward protocol aggregator that streams logs into BigQuery.
//! This file wires the stages together; it is the only place that knows them all.

pub mod buffer;
pub mod codec;
pub mod config;
pub mod event;
pub mod filter;
pub mod fluentd;
pub mod format;
pub mod input;
pub mod internal_events;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod ratelimit;
pub mod replay;
pub mod router;

use input::forward::ForwardInput;
use metrics::http::Endpoint;
use metrics::{
    BufferStatus, Metrics, Observe, OutputCounts, OutputStatus, PluginStatus, SinkStatus,
};
use output::bigquery::BigQueryOutput;
use pipeline::Monitored;
use pipeline::Pipeline;
use router::Router;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    mut pipeline: Pipeline,
    shutdown: CancellationToken,
    shutdown_timeout: std::time::Duration,
) -> Result<(), RunError> {
    let endpoint_config = pipeline.endpoint.take().unwrap_or_default();
    let buffered = std::mem::take(&mut pipeline.buffered);
    let monitored = std::mem::take(&mut pipeline.monitored);
    let (inputs, router) = pipeline.into_router();
    let router = Arc::new(router);
    let metrics = Arc::new(Metrics::new());
    metrics.set_observer(Arc::new(Observed {
        router: Arc::clone(&router),
        buffered,
        monitored,
    }));
    let mut bound = Vec::with_capacity(inputs.len());
    for config in inputs {
        let id = config.id.clone();
        let describe = config.describe();
        let type_name = match config.listen {
            input::forward::Listen::Tcp { .. } => "forward",
            input::forward::Listen::Unix { .. } => "unix",
        };
        let input = ForwardInput::bind(config, metrics.input(&id, type_name))
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
    let endpoint = bind_endpoint(endpoint_config).await?;
    let mut serving = JoinSet::new();
    for input in bound {
        serving.spawn(input.serve(Arc::clone(&router), shutdown.clone()));
    }
    metrics.set_listening(true);
    // The endpoint outlives the inputs so the last scrape sees the drain.
    let endpoint_stop = CancellationToken::new();
    let endpoint_task =
        endpoint.map(|e| tokio::spawn(e.serve(Arc::clone(&metrics), endpoint_stop.clone())));
    shutdown.cancelled().await;
    metrics.set_listening(false);
    tracing::info!("shutting down: no new connections, finishing messages in flight");
    while serving.join_next().await.is_some() {}
    let deadline = std::time::Instant::now() + shutdown_timeout;
    for output in &router.outputs() {
        if let Err(err) = output.shutdown(deadline).await {
            tracing::error!(error = %err, "output did not flush at shutdown");
        }
    }
    endpoint_stop.cancel();
    if let Some(task) = endpoint_task {
        let _ = task.await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// The metrics endpoint. Configured (`<source> @type prometheus`), a busy port fails start-up
/// like an input's; the default local endpoint only warns, so a second instance on the same
/// host (or a fluentd beside it) still runs.
async fn bind_endpoint(
    config: metrics::http::EndpointConfig,
) -> Result<Option<Endpoint>, RunError> {
    let describe = config.describe();
    let configured = config.configured;
    let path = config.metrics_path.clone();
    match Endpoint::bind(config).await {
        Ok(endpoint) => {
            if let Some(addr) = endpoint.local_addr() {
                // Not the word the inputs log: tools (and the tests) find inputs by it.
                tracing::info!(http_addr = %addr, "metrics endpoint up ({describe}): {path}, /healthz, /readyz, /api/plugins.json");
            }
            Ok(Some(endpoint))
        }
        Err(source) if configured => Err(RunError::Bind {
            input: "prometheus".into(),
            source,
        }),
        Err(err) => {
            tracing::warn!(error = %err, "default metrics endpoint ({describe}) not started; add <source> @type prometheus to choose a port");
            Ok(None)
        }
    }
}

/// What metrics read at scrape time: the router's unmatched count, each buffered output,
/// and every other plugin's counters.
struct Observed {
    router: Arc<Router>,
    buffered: Vec<Arc<BigQueryOutput>>,
    monitored: Vec<Monitored>,
}

impl Observe for Observed {
    fn outputs(&self, visit: &mut dyn FnMut(&OutputStatus<'_>)) {
        for output in &self.buffered {
            let buffer = output.buffer();
            let (stage_length, queue_length, stage_bytes, queue_bytes) = buffer.sizes();
            let stats = &buffer.stats;
            let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let nanos = |c: &std::sync::atomic::AtomicU64| std::time::Duration::from_nanos(n(c));
            let status = BufferStatus {
                stage_length,
                queue_length,
                stage_bytes,
                queue_bytes,
                total_limit: buffer.config().total_limit_size,
                oldest_age: buffer.oldest_age(),
                retry_wait: buffer.retry_wait(),
                flush_time: nanos(&stats.flush_nanos),
                slow_flush_count: n(&stats.slow_flushes),
                blocked: nanos(&stats.blocked_nanos),
                overflow_refusals: n(&stats.overflow_refusals),
                dropped_chunks: n(&stats.dropped_chunks),
                dropped_records: n(&stats.dropped_records),
            };
            visit(&OutputStatus {
                plugin_id: output::Output::id(&**output),
                type_name: output::Output::type_name(&**output),
                counts: OutputCounts {
                    emit_count: n(&stats.emit_count),
                    emit_records: n(&stats.emit_records),
                    write_count: n(&stats.write_count),
                    retry_count: n(&stats.retry_count),
                    rollback_count: n(&stats.rollback_count),
                    num_errors: n(&stats.num_errors),
                },
                buffer: Some(status),
                sink: Some(SinkStatus {
                    tables_created: output.detail.tables_created(),
                    missing_datasets: output.detail.missing_datasets(),
                    detail: &output.detail,
                }),
            });
        }
        for m in self.monitored.iter().filter(|m| m.output) {
            visit(&OutputStatus {
                plugin_id: &m.id,
                type_name: m.type_name,
                counts: m.counters.counts(),
                buffer: None,
                sink: None,
            });
        }
    }

    fn plugins(&self, visit: &mut dyn FnMut(&PluginStatus<'_>)) {
        for m in &self.monitored {
            visit(&PluginStatus {
                plugin_id: &m.id,
                type_name: m.type_name,
                drops: m.drops,
                counters: &m.counters,
            });
        }
    }

    fn unmatched_events(&self) -> u64 {
        self.router.unmatched_events()
    }
}
