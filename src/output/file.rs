//! `@type file`: fluentd's out_file. Paths, formats and suffixes as out_file names them;
//! events are written (and flushed to the OS) before `emit` resolves. It also catches dead
//! letters later, so it must never lose an accepted line silently.
//!
//! Path naming, as fluentd's out_file: `path`, then `.%Y%m%d` (from the buffer `timekey`,
//! unless the path has its own strftime parts), then `_N` (unless `append true`), then
//! `path_suffix` (.log), then `.gz` with `compress gzip`; a `*` in `path` stands for the time
//! part and index. fluentd writes one file per flushed chunk; bqforward writes as events
//! arrive, so `_N` is chosen once per path and run (the first index not on disk) and appended
//! to while the process runs.

use super::{Output, OutputError};
use crate::config::{ConfigError, Section};
use crate::event::{Batch, BoxFuture};
use crate::fluentd::template::{CachedTemplate, Template};
use crate::format::time::Zone;
use crate::format::{Formatter, Inject};
use flate2::{Compression, write::GzEncoder};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// At most this many files stay open; beyond it all are closed and reopened on demand.
const MAX_OPEN_FILES: usize = 64;

pub struct FileOutput {
    id: String,
    type_name: &'static str,
    state: Arc<Mutex<FileState>>,
}

struct FileState {
    prefix: CachedTemplate,
    suffix: String,
    append: bool,
    /// Between the name and the index of a new file: `_` (out_file), `.` (secondary_file).
    index_separator: char,
    gzip: bool,
    formatter: Formatter,
    open: HashMap<String, File>,
}

fn timekey_format(timekey_secs: u64) -> &'static str {
    match timekey_secs {
        0..60 => "%Y%m%d%H%M%S",
        60..3600 => "%Y%m%d%H%M",
        3600..86400 => "%Y%m%d%H",
        _ => "%Y%m%d",
    }
}

impl FileOutput {
    pub fn from_config(id: String, s: &Section<'_>) -> Result<(Self, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let path = s
            .str("path")
            .ok_or_else(|| ConfigError::at(s.location(), "<match> @type file needs 'path'"))?;
        let append = s.bool("append")?.unwrap_or(false);
        let add_suffix = s.bool("add_path_suffix")?.unwrap_or(true);
        let path_suffix = s.string("path_suffix", ".log");
        let gzip = matches!(
            s.one_of("compress", &["text", "gzip", "gz"])?,
            Some("gzip" | "gz")
        );
        // A bad <buffer> is reported with the output's own unknown parameters.
        let mut deferred = Vec::new();
        let (timekey, utc, timekey_zone) = match s.section("buffer")? {
            Some(buffer) => {
                let b = Section::new(buffer);
                let timekey = b.time("timekey")?.map(|d| d.as_secs()).unwrap_or(86400);
                let utc = b.bool("timekey_use_utc")?.unwrap_or(false);
                let zone = b.str("timekey_zone");
                match b.finish(super::BUFFER_PARAMS) {
                    Ok(w) => warnings.extend(w),
                    Err(e) => deferred.push(e),
                }
                (timekey, utc, zone)
            }
            None => (86400, false, None),
        };
        let utc = utc || s.bool("utc")?.unwrap_or(false);
        let zone = match (utc, timekey_zone) {
            (false, Some(name)) => Zone::parse(name),
            _ => Zone::from_params(utc, None),
        }
        .map_err(|e| ConfigError::at(s.location(), e))?;
        let time_slice = s
            .str("time_slice_format")
            .unwrap_or(timekey_format(timekey));

        let comp = if gzip { ".gz" } else { "" };
        let suffix = if add_suffix { path_suffix.as_str() } else { "" };
        let (prefix, suffix) = match path.split_once('*') {
            Some((before, after)) => (format!("{before}{time_slice}"), format!("{after}{comp}")),
            None if path.contains('%') => (path.to_owned(), format!("{suffix}{comp}")),
            None => (format!("{path}.{time_slice}"), format!("{suffix}{comp}")),
        };
        let prefix =
            Template::parse(&prefix, zone).map_err(|e| ConfigError::at(s.location(), e))?;

        let (inject, w) = Inject::from_config(s.section("inject")?)?;
        warnings.extend(w);
        let (formatter, w) =
            Formatter::from_config(s.element(), s.section("format")?, inject, "out_file")?;
        warnings.extend(w);
        if !deferred.is_empty() {
            // Every parameter is read by now, so the section's own unknown ones are known.
            if let Err(own) = s.finish(super::COMMON_OUTPUT_PARAMS) {
                deferred.push(own);
            }
            ConfigError::gather(deferred)?;
        }

        let state = FileState {
            prefix: CachedTemplate::new(prefix),
            suffix,
            append,
            index_separator: '_',
            gzip,
            formatter,
            open: HashMap::new(),
        };
        let output = Self {
            id,
            type_name: "file",
            state: Arc::new(Mutex::new(state)),
        };
        Ok((output, warnings))
    }

    /// fluentd's `<secondary> @type secondary_file`: `directory` + `basename` (dump.bin; the
    /// same placeholders as names: `${tag}`, `${KEY}`, strftime), `append` (false: a new
    /// `.N` file per run and path, as fluentd's per flushed chunk), `compress` (`text`,
    /// `gzip`). fluentd dumps the chunk's bytes; bqforward writes each dead letter as one
    /// JSON line (`{"table","reason","location","message","tag","time","record"}`), so the
    /// file can be read and replayed.
    pub fn secondary_from_config(
        id: String,
        s: &Section<'_>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let at = |message: String| ConfigError::at(s.location(), message);
        let directory = s
            .str("directory")
            .ok_or_else(|| s.missing("directory", "secondary_file"))?;
        let basename = s.str("basename").unwrap_or("dump.bin");
        if basename.contains('/') {
            return Err(at("basename should not include `/`".into()));
        }
        let append = s.bool("append")?.unwrap_or(false);
        let gzip = matches!(s.one_of("compress", &["text", "gzip"])?, Some("gzip"));
        let path = Path::new(directory).join(basename);
        let prefix = Template::parse(&path.to_string_lossy(), Zone::Local).map_err(at)?;
        let state = FileState {
            prefix: CachedTemplate::new(prefix),
            suffix: if gzip { ".gz".into() } else { String::new() },
            append,
            index_separator: '.',
            gzip,
            formatter: Formatter::json(),
            open: HashMap::new(),
        };
        let output = Self {
            id,
            type_name: "secondary_file",
            state: Arc::new(Mutex::new(state)),
        };
        Ok((output, Vec::new()))
    }

    fn error(&self, source: std::io::Error) -> OutputError {
        OutputError::Io {
            output: self.id.clone(),
            source,
        }
    }
}

impl FileState {
    /// Formats the batch, grouped by destination path, then writes each group at once.
    fn write(&mut self, id: &str, batch: &Batch) -> Result<(), OutputError> {
        let mut groups: Vec<(String, Vec<u8>)> = Vec::new();
        for event in &batch.events {
            let prefix = self.prefix.render(&batch.tag, event.time, &event.record);
            let index = match groups.last() {
                Some((p, _)) if p == prefix => groups.len() - 1,
                _ => match groups.iter().position(|(p, _)| p == prefix) {
                    Some(i) => i,
                    None => {
                        groups.push((prefix.to_owned(), Vec::new()));
                        groups.len() - 1
                    }
                },
            };
            self.formatter
                .format(&batch.tag, event, &mut groups[index].1)
                .map_err(|e| OutputError::Record {
                    output: id.to_owned(),
                    detail: e.to_string(),
                })?;
        }
        for (prefix, lines) in groups {
            self.write_lines(&prefix, &lines)
                .map_err(|source| OutputError::Io {
                    output: id.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    fn write_lines(&mut self, prefix: &str, lines: &[u8]) -> std::io::Result<()> {
        if !self.open.contains_key(prefix) {
            if self.open.len() >= MAX_OPEN_FILES {
                self.open.clear();
            }
            let file = self.open_file(prefix)?;
            self.open.insert(prefix.to_owned(), file);
        }
        let Some(file) = self.open.get_mut(prefix) else {
            return Ok(());
        };
        if self.gzip {
            // One gzip member per write: concatenated members are a valid gzip file.
            let mut encoder =
                GzEncoder::new(Vec::with_capacity(lines.len() / 4), Compression::fast());
            encoder.write_all(lines)?;
            file.write_all(&encoder.finish()?)
        } else {
            file.write_all(lines)
        }
    }

    fn open_file(&self, prefix: &str) -> std::io::Result<File> {
        let path = if self.append {
            format!("{prefix}{}", self.suffix)
        } else {
            (0..)
                .map(|n| format!("{prefix}{}{n}{}", self.index_separator, self.suffix))
                .find(|candidate| !Path::new(candidate).exists())
                .unwrap_or_default()
        };
        if let Some(dir) = Path::new(&path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).open(&path)
    }
}

impl Output for FileOutput {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        self.type_name
    }

    fn emit(&self, batch: Batch) -> BoxFuture<'_, Result<(), OutputError>> {
        let state = Arc::clone(&self.state);
        let id = self.id.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut state = state.lock().map_err(|_| OutputError::Closed(id.clone()))?;
                state.write(&id, &batch)
            })
            .await
            .map_err(|e| self.error(std::io::Error::other(e)))?
        })
    }

    fn shutdown(&self, _deadline: std::time::Instant) -> BoxFuture<'_, Result<(), OutputError>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                if let Ok(mut state) = state.lock() {
                    for file in state.open.values_mut() {
                        file.sync_all()?;
                    }
                    state.open.clear();
                }
                Ok(())
            })
            .await
            .map_err(|e| self.error(std::io::Error::other(e)))?
            .map_err(|e| self.error(e))
        })
    }
}
