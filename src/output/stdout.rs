//! `@type stdout`: fluentd's out_stdout, one line per event on standard output, in the
//! `stdout` format (`time tag: {json}`) unless `<format>` says otherwise.

use super::{Output, OutputError};
use crate::config::{ConfigError, Section};
use crate::event::{Batch, BoxFuture};
use crate::format::{Formatter, Inject};
use std::io::Write;
use std::sync::{Arc, Mutex};

pub struct StdoutOutput {
    id: String,
    formatter: Arc<Mutex<Formatter>>,
}

impl StdoutOutput {
    pub fn from_config(id: String, s: &Section<'_>) -> Result<(Self, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let (inject, w) = Inject::from_config(s.section("inject")?)?;
        warnings.extend(w);
        let (formatter, w) =
            Formatter::from_config(s.element(), s.section("format")?, inject, "stdout")?;
        warnings.extend(w);
        if let Some(buffer) = s.section("buffer")? {
            warnings.extend(Section::new(buffer).finish(super::BUFFER_PARAMS)?);
        }
        let output = Self {
            id,
            formatter: Arc::new(Mutex::new(formatter)),
        };
        Ok((output, warnings))
    }
}

impl Output for StdoutOutput {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        "stdout"
    }

    fn emit(&self, batch: Batch) -> BoxFuture<'_, Result<(), OutputError>> {
        let formatter = Arc::clone(&self.formatter);
        let id = self.id.clone();
        Box::pin(async move {
            let write = tokio::task::spawn_blocking(move || {
                let mut formatter = formatter
                    .lock()
                    .map_err(|_| OutputError::Closed(id.clone()))?;
                let mut text = Vec::with_capacity(batch.events.len() * 128);
                for event in &batch.events {
                    formatter
                        .format(&batch.tag, event, &mut text)
                        .map_err(|e| OutputError::Record {
                            output: id.clone(),
                            detail: e.to_string(),
                        })?;
                }
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&text)
                    .and_then(|()| stdout.flush())
                    .map_err(|source| OutputError::Io { output: id, source })
            });
            write.await.map_err(|e| OutputError::Io {
                output: self.id.clone(),
                source: std::io::Error::other(e),
            })?
        })
    }

    fn shutdown(&self, _deadline: std::time::Instant) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(async {
            std::io::stdout().flush().map_err(|source| OutputError::Io {
                output: self.id.clone(),
                source,
            })
        })
    }
}
