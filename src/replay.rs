//! `bqforward replay`: events from files bqforward wrote (the `file` output in its `json` or
//! `out_file` format, `<secondary>` dead letters) sent once through a config's pipeline, so
//! fixing a table and loading its dead letters is one command. The config runs without its
//! `<source>`s and with memory buffers of the replay's own (it can run beside the daemon on
//! the same buffer directory); what the outputs could not deliver is counted, and the exit
//! status says whether anything failed. Must not know an output's protocol.

use crate::config::syntax::{Element, Param};
use crate::event::{Batch, Event, EventTime};
use crate::metrics::RowFate;
use crate::pipeline::Pipeline;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Events handed to the pipeline at once.
const BATCH: usize = 1000;
/// Unreadable lines named on stderr, at most.
const SHOWN_ERRORS: usize = 10;
/// A line longer than this is skipped as unreadable, read through without being kept (a file
/// without newlines, or a wrong one, costs no more memory than this). It is the file buffer's
/// largest frame: a record is at most a Forward message (`chunk_size_limit`, 64 MiB by
/// default), and its JSON line a few times that at worst.
const MAX_LINE: usize = 256 * 1024 * 1024;

pub struct ReplayOptions {
    /// Route every event with this tag (lines of the `json` format carry none).
    pub tag: Option<String>,
    /// The `<label>` events enter (`@label` of the config's sources); `None`: the root.
    pub label: Option<String>,
    /// How long the outputs may take to deliver after the last line was read.
    pub timeout: Duration,
}

/// What a replay came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub read: u64,
    pub unreadable: u64,
    /// Handed to the pipeline.
    pub dispatched: u64,
    /// Events an output refused, or no `<match>` took.
    pub refused: u64,
    pub unmatched: u64,
    /// Rows the BigQuery outputs loaded or inserted.
    pub delivered: u64,
    /// Rows the BigQuery outputs dead-lettered or dropped.
    pub dead_lettered: u64,
    pub dropped: u64,
    /// Where reading stopped when interrupted.
    pub interrupted_at: Option<String>,
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.unreadable + self.refused + self.unmatched + self.dead_lettered + self.dropped
    }

    pub fn ok(&self) -> bool {
        self.failed() == 0 && self.interrupted_at.is_none()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replay: {} events read from {} files; {} sent through the pipeline, {} delivered to BigQuery; {} failed ({} unreadable lines, {} refused by an output, {} matched no <match>, {} dead-lettered, {} dropped)",
            self.read,
            self.files,
            self.dispatched,
            self.delivered,
            self.failed(),
            self.unreadable,
            self.refused,
            self.unmatched,
            self.dead_lettered,
            self.dropped
        )?;
        if let Some(at) = &self.interrupted_at {
            write!(f, "; interrupted after {at}")?;
        }
        Ok(())
    }
}

/// The config as replay runs it: no `<source>`s (nothing listens), and every BigQuery
/// output's buffer in memory, flushed every second in chunks of at most 64 MiB, blocking the
/// reader when 512 MiB wait, and flushed at the end. Returns the `@label` the sources send
/// to, when they all send to the same one: replayed events enter there.
pub fn replay_config(root: &mut Element) -> Option<String> {
    let labels: Vec<Option<String>> = root
        .elements_named("source")
        .filter(|s| {
            s.param("@type")
                .is_some_and(|t| ["forward", "unix"].contains(&t.value.as_str()))
        })
        .map(|s| s.param("@label").map(|l| l.value.clone()))
        .collect();
    root.elements.retain(|e| e.name != "source");
    for_each_bigquery_output(root);
    match labels.split_first() {
        Some((first, rest)) if rest.iter().all(|l| l == first) => first.clone(),
        _ => None,
    }
}

fn for_each_bigquery_output(element: &mut Element) {
    for child in &mut element.elements {
        let bigquery = matches!(child.name.as_str(), "match" | "store")
            && child
                .param("@type")
                .is_some_and(|t| t.value.starts_with("bigquery_"));
        if bigquery {
            replay_buffer(child);
        } else {
            for_each_bigquery_output(child);
        }
    }
}

fn replay_buffer(output: &mut Element) {
    let location = output.location.clone();
    if !output.elements.iter().any(|e| e.name == "buffer") {
        output
            .elements
            .push(Element::empty("buffer", location.clone()));
    }
    let Some(buffer) = output.elements.iter_mut().find(|e| e.name == "buffer") else {
        return;
    };
    let set = [
        ("@type", "memory"),
        ("flush_at_shutdown", "true"),
        ("flush_mode", "interval"),
        ("flush_interval", "1s"),
        ("chunk_limit_size", "64m"),
        ("total_limit_size", "512m"),
        ("overflow_action", "block"),
    ];
    buffer
        .params
        .retain(|p| p.key != "path" && !set.iter().any(|(k, _)| *k == p.key));
    for (key, value) in set {
        buffer.params.push(Param {
            key: key.into(),
            value: value.into(),
            location: location.clone(),
        });
    }
}

/// Sends the events of `paths` (files, or directories read recursively, in name order)
/// through `pipeline` and waits for its outputs.
pub async fn replay(
    mut pipeline: Pipeline,
    paths: &[PathBuf],
    options: &ReplayOptions,
    interrupt: CancellationToken,
) -> Summary {
    let buffered = std::mem::take(&mut pipeline.buffered);
    let (_, router) = pipeline.into_router();
    let mut summary = Summary::default();
    let label = match &options.label {
        Some(name) => match router.label_index(name) {
            Some(index) => index,
            None => {
                eprintln!("replay: the config has no <label {name}>");
                summary.refused += 1;
                return summary;
            }
        },
        None => 0,
    };
    let files = files(paths, &mut summary);
    let mut reader = Reader {
        router: &router,
        label,
        options,
        batch: None,
        summary,
        shown: 0,
        progress: Instant::now(),
    };
    'files: for file in &files {
        reader.summary.files += 1;
        let mut lines = match open(file) {
            Ok(lines) => lines,
            Err(err) => {
                reader.unreadable(&format!("{}: {err}", file.display()));
                continue;
            }
        };
        let mut line = Vec::new();
        // Lines read so far.
        let mut n = 0;
        loop {
            if interrupt.is_cancelled() {
                reader.summary.interrupted_at = Some(format!("{}:{}", file.display(), n));
                break 'files;
            }
            let read = next_line(&mut *lines, MAX_LINE, &mut line);
            n += 1;
            match read {
                Ok(Line::End) => break,
                Ok(Line::Text) => reader.line(&line, file, n).await,
                Ok(Line::TooLong(len)) => reader.unreadable(&format!(
                    "{}:{n}: a line of {len} bytes, longer than any bqforward writes ({} MiB): skipped",
                    file.display(),
                    MAX_LINE >> 20
                )),
                Err(err) => {
                    reader.unreadable(&format!("{}:{n}: {err}", file.display()));
                    break;
                }
            }
        }
    }
    reader.flush().await;
    let mut summary = reader.summary;
    eprintln!(
        "replay: {} events read, waiting for the outputs to deliver (at most {:?})",
        summary.read, options.timeout
    );
    let deadline = std::time::Instant::now() + options.timeout;
    for output in &buffered {
        output.buffer().shutdown(deadline).await;
        let detail = &output.detail;
        summary.delivered += detail.total(RowFate::Inserted);
        summary.dead_lettered += detail.total(RowFate::DeadLettered);
        summary.dropped += detail.total(RowFate::Dropped);
    }
    for output in router.outputs() {
        if let Err(err) = output.shutdown(deadline).await {
            tracing::error!(error = %err, "output did not flush");
        }
    }
    summary.unmatched = router.unmatched_events();
    summary
}

/// Every file under `paths`, in name order per directory.
fn files(paths: &[PathBuf], summary: &mut Summary) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inner: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(err) => {
                    eprintln!("replay: {}: {err}", path.display());
                    summary.unreadable += 1;
                    continue;
                }
            };
            inner.sort();
            out.extend(files(&inner, summary));
        } else {
            out.push(path.clone());
        }
    }
    out
}

/// A file's bytes, inflated when they are gzip (concatenated members too).
fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    let file = std::io::Cursor::new(magic[..n].to_vec()).chain(file);
    if magic[..n] == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        ))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// What `next_line` found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line, in the caller's buffer (without its `\n`).
    Text,
    /// A line of this many bytes, more than the limit: read through, not kept.
    TooLong(usize),
    /// The end of the file.
    End,
}

/// Reads the next line into `line` (emptied first; the `\n` not kept), keeping at most `max`
/// bytes of it: a longer line is read to its end and dropped. The last line may lack its `\n`;
/// a file's final `\n` ends its last line, not an empty one.
fn next_line(reader: &mut dyn BufRead, max: usize, line: &mut Vec<u8>) -> std::io::Result<Line> {
    let read = |len: usize| {
        if len > max {
            Line::TooLong(len)
        } else {
            Line::Text
        }
    };
    line.clear();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(if any { read(len) } else { Line::End });
        }
        any = true;
        let (part, used) = match memchr::memchr(b'\n', buf) {
            Some(at) => (&buf[..at], Some(at + 1)),
            None => (buf, None),
        };
        len = len.saturating_add(part.len());
        if len <= max {
            line.extend_from_slice(part);
        } else if !line.is_empty() {
            *line = Vec::new();
        }
        let ended = used.is_some();
        let used = used.unwrap_or(buf.len());
        reader.consume(used);
        if ended {
            return Ok(read(len));
        }
    }
}

struct Reader<'a> {
    router: &'a crate::router::Router,
    label: usize,
    options: &'a ReplayOptions,
    batch: Option<Batch>,
    summary: Summary,
    shown: usize,
    progress: Instant,
}

impl Reader<'_> {
    fn unreadable(&mut self, what: &str) {
        self.summary.unreadable += 1;
        if self.shown < SHOWN_ERRORS {
            self.shown += 1;
            eprintln!("replay: unreadable: {what}");
        }
    }

    async fn line(&mut self, line: &[u8], file: &Path, n: usize) {
        let text = String::from_utf8_lossy(line);
        let (tag, event) = match parse_line(text.trim_end_matches('\r')) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(why) => {
                self.unreadable(&format!("{}:{n}: {why}", file.display()));
                return;
            }
        };
        let Some(tag) = self.options.tag.clone().or(tag) else {
            self.unreadable(&format!(
                "{}:{n}: the line has no tag (json format): pass --match TAG",
                file.display()
            ));
            return;
        };
        self.summary.read += 1;
        match &mut self.batch {
            Some(batch) if *batch.tag == *tag && batch.events.len() < BATCH => {
                batch.events.push(event);
            }
            _ => {
                self.flush().await;
                self.batch = Some(Batch {
                    tag: Arc::from(tag.as_str()),
                    events: vec![event],
                });
            }
        }
        if self.progress.elapsed() >= Duration::from_secs(1) {
            self.progress = Instant::now();
            eprintln!(
                "replay: {}: line {n}, {} events read",
                file.display(),
                self.summary.read
            );
        }
    }

    async fn flush(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        let events = batch.events.len() as u64;
        let plan = self.router.plan(self.label, &batch.tag);
        match self.router.dispatch(&plan, batch).await {
            Ok(()) => self.summary.dispatched += events,
            Err(err) => {
                eprintln!("replay: an output refused {events} events: {err}");
                self.summary.refused += events;
            }
        }
    }
}

/// One line as bqforward's files write it: a dead letter
/// (`{"table","reason",...,"tag","time","record"}`), a `json` line (the record), or an
/// `out_file` line (`time<TAB>tag<TAB>record`). `None` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<(Option<String>, Event)>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let dead_letter = value.get("reason").is_some()
            && value["tag"].is_string()
            && value["record"].is_object();
        if dead_letter {
            let time = value["time"]
                .as_f64()
                .and_then(EventTime::from_f64)
                .unwrap_or_else(EventTime::now);
            let tag = value["tag"].as_str().map(str::to_owned);
            return Ok(Some((tag, event(time, &value["record"])?)));
        }
        return Ok(Some((None, event(EventTime::now(), &value)?)));
    }
    let mut parts = line.splitn(3, '\t');
    let (Some(time), Some(tag), Some(record)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("neither JSON nor out_file's time<TAB>tag<TAB>record".into());
    };
    let time = parse_time(time).ok_or_else(|| format!("unreadable time '{time}'"))?;
    let record: Value =
        serde_json::from_str(record).map_err(|e| format!("record is not JSON: {e}"))?;
    Ok(Some((Some(tag.to_owned()), event(time, &record)?)))
}

fn event(time: EventTime, record: &Value) -> Result<Event, String> {
    if !record.is_object() {
        return Err("the record is not a JSON object".into());
    }
    let bytes = rmp_serde::to_vec(record).map_err(|e| e.to_string())?;
    Ok(Event {
        time,
        record: bytes.into(),
    })
}

/// out_file's time: its default `%Y-%m-%dT%H:%M:%S%z`, RFC 3339, or Unix seconds.
fn parse_time(text: &str) -> Option<EventTime> {
    if let Ok(secs) = text.parse::<f64>() {
        return EventTime::from_f64(secs);
    }
    let parsed = chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text))
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S %z"))
        .ok()?;
    Some(EventTime::new(
        parsed.timestamp(),
        parsed.timestamp_subsec_nanos(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(event: &Event) -> Value {
        rmp_serde::from_slice(&event.record).unwrap()
    }

    /// Every line as `next_line` reads it from `text` with lines of at most `max` bytes,
    /// through a reader of `capacity` bytes (so lines span its refills).
    fn read_lines(text: &[u8], max: usize, capacity: usize) -> Vec<Result<String, usize>> {
        let mut reader = BufReader::with_capacity(capacity, text);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            match next_line(&mut reader, max, &mut line).unwrap() {
                Line::End => return out,
                Line::Text => out.push(Ok(String::from_utf8(line.clone()).unwrap())),
                Line::TooLong(len) => out.push(Err(len)),
            }
        }
    }

    #[test]
    fn lines_longer_than_the_limit_are_skipped_and_reading_goes_on() {
        let text = b"a\nlong line\n\nfour\nlast";
        for capacity in [1, 2, 3, 5, 64] {
            assert_eq!(
                read_lines(text, 4, capacity),
                [
                    Ok("a".into()),
                    Err(9),
                    Ok("".into()),
                    Ok("four".into()),
                    Ok("last".into())
                ],
                "capacity {capacity}"
            );
        }
        // A final newline ends the last line; a long last line without one is still skipped.
        assert_eq!(read_lines(b"x\n", 4, 2), [Ok("x".into())]);
        assert_eq!(read_lines(b"x\nabcdefgh", 4, 3), [Ok("x".into()), Err(8)]);
        assert_eq!(read_lines(b"", 4, 3), []);
        // Without a limit it reads as splitting at newlines does.
        let text = b"one\ntwo\r\n\n\nthree";
        let split: Vec<Result<String, usize>> = text
            .split(|b| *b == b'\n')
            .map(|l| Ok(String::from_utf8(l.to_vec()).unwrap()))
            .collect();
        assert_eq!(read_lines(text, usize::MAX, 2), split);
    }

    #[test]
    fn lines_of_every_format_bqforward_writes() {
        let (tag, e) = parse_line(
            r#"{"table":"p.d.t","reason":"invalid","location":"","message":"no such field","tag":"app.x","time":1700000000.5,"record":{"a":1,"b":"x"}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(tag.as_deref(), Some("app.x"));
        assert_eq!(e.time, EventTime::new(1_700_000_000, 500_000_000));
        assert_eq!(record(&e), json!({"a": 1, "b": "x"}));

        let (tag, e) = parse_line(r#"{"a":2}"#).unwrap().unwrap();
        assert_eq!(tag, None);
        assert_eq!(record(&e), json!({"a": 2}));

        let (tag, e) = parse_line("2023-11-14T22:13:20+0000\tapp.y\t{\"c\":[1,2]}")
            .unwrap()
            .unwrap();
        assert_eq!(tag.as_deref(), Some("app.y"));
        assert_eq!(e.time, EventTime::new(1_700_000_000, 0));
        assert_eq!(record(&e), json!({"c": [1, 2]}));

        assert!(parse_line("").unwrap().is_none());
        assert!(parse_line("{broken").is_err());
        assert!(parse_line("[1,2]").is_err());
        assert!(parse_line("yesterday\tapp\t{}").is_err());
        assert!(parse_line("{\"a\":1}\n").is_ok());
    }

    #[test]
    fn replay_config_drops_sources_and_keeps_buffers_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.conf");
        std::fs::write(
            &path,
            "<source>\n @type forward\n</source>\n<label @X>\n<match a>\n @type bigquery_load\n <buffer time>\n  path /var/lib/b\n  flush_interval 3600s\n </buffer>\n</match>\n</label>\n<match b>\n @type bigquery_insert\n</match>\n",
        )
        .unwrap();
        let mut root = crate::config::parse_file(&path).unwrap();
        assert_eq!(replay_config(&mut root), None);
        assert!(root.elements_named("source").next().is_none());
        let label = root.elements_named("label").next().unwrap();
        let buffer = label.elements[0].elements_named("buffer").next().unwrap();
        assert_eq!(buffer.arg, "time");
        assert!(buffer.param("path").is_none());
        assert_eq!(buffer.param("@type").unwrap().value, "memory");
        assert_eq!(buffer.param("flush_interval").unwrap().value, "1s");
        let insert = root.elements_named("match").next().unwrap();
        let buffer = insert.elements_named("buffer").next().unwrap();
        assert_eq!(buffer.param("flush_at_shutdown").unwrap().value, "true");

        std::fs::write(
            &path,
            "<source>\n @type forward\n @label @X\n</source>\n<source>\n @type unix\n @label @X\n</source>\n<source>\n @type prometheus\n</source>\n<label @X>\n<match a>\n @type null\n</match>\n</label>\n",
        )
        .unwrap();
        let mut root = crate::config::parse_file(&path).unwrap();
        assert_eq!(replay_config(&mut root).as_deref(), Some("@X"));
    }
}
