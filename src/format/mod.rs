//! Turning events into output text: fluentd's `<format>` (json, out_file, stdout) and
//! `<inject>` (time, tag, hostname keys). Reads records as msgpack bytes; never does I/O.

pub mod json;
pub mod time;

use crate::codec::msgpack::MsgpackError;
use crate::config::{ConfigError, Element, Section};
use crate::event::{Event, EventTime};
use json::Extra;
use time::{TimeFormatter, Zone};

/// fluentd's time parameters, shared by `<format>` and `<inject>`.
fn time_formatter(s: &Section<'_>) -> Result<TimeFormatter, ConfigError> {
    let format = s.str("time_format");
    let localtime = s.bool("localtime")?;
    let utc = s.bool("utc")?.unwrap_or(false) || localtime == Some(false);
    let zone =
        Zone::from_params(utc, s.str("timezone")).map_err(|e| ConfigError::at(s.location(), e))?;
    TimeFormatter::new(format, zone).map_err(|e| ConfigError::at(s.location(), e))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TimeType {
    Float,
    Unixtime,
    String,
}

/// fluentd's `<inject>`: fields added to each record on output.
#[derive(Debug, Clone, Default)]
pub struct Inject {
    time_key: Option<String>,
    time_type: Option<TimeType>,
    time: Option<TimeFormatter>,
    tag_key: Option<String>,
    hostname: Option<(String, String)>,
}

impl Inject {
    pub fn from_config(element: Option<&Element>) -> Result<(Self, Vec<String>), ConfigError> {
        let Some(element) = element else {
            return Ok((Self::default(), Vec::new()));
        };
        let s = Section::new(element);
        let time_type = match s.one_of("time_type", &["float", "unixtime", "string"])? {
            Some("unixtime") => TimeType::Unixtime,
            Some("string") => TimeType::String,
            _ => TimeType::Float,
        };
        let time = time_formatter(&s)?;
        let hostname = s.str("hostname_key").map(|key| {
            let name = s
                .str("hostname")
                .map(str::to_owned)
                .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
            (key.to_owned(), name)
        });
        let inject = Self {
            time_key: s.str("time_key").map(str::to_owned),
            time_type: Some(time_type),
            time: Some(time),
            tag_key: s.str("tag_key").map(str::to_owned),
            hostname,
        };
        let warnings = s.finish(&["worker_id_key"])?;
        Ok((inject, warnings))
    }

    pub fn is_empty(&self) -> bool {
        self.time_key.is_none() && self.tag_key.is_none() && self.hostname.is_none()
    }

    /// The fields to add to one event's record, pushed onto `extras` (which should be empty;
    /// filled in place, a row need not move the whole array out of a return value). A string
    /// time is the formatter's own text, borrowed until the next event.
    #[inline]
    pub fn extras_into<'a>(&'a mut self, tag: &'a str, time: EventTime, extras: &mut Extras<'a>) {
        let Self {
            time_key,
            time_type,
            time: formatter,
            tag_key,
            hostname,
        } = self;
        if let (Some(key), Some(time_type)) = (time_key.as_deref(), *time_type) {
            let value = match time_type {
                TimeType::Float => Extra::Time(time),
                TimeType::Unixtime => Extra::Int(time.secs),
                TimeType::String => match formatter {
                    Some(formatter) => Extra::Str(formatter.format(time)),
                    None => Extra::Str(""),
                },
            };
            extras.push((key, value));
        }
        if let Some(key) = tag_key.as_deref() {
            extras.push((key, Extra::Str(tag)));
        }
        if let Some((key, name)) = hostname.as_ref() {
            extras.push((key.as_str(), Extra::Str(name.as_str())));
        }
    }
}

/// The few fields `<inject>` adds to one event (time, tag, hostname, and one more for the
/// caller), without a heap allocation per event.
#[derive(Debug, Clone, Copy)]
pub struct Extras<'a> {
    items: [(&'a str, Extra<'a>); 4],
    len: usize,
}

impl Default for Extras<'_> {
    fn default() -> Self {
        Self {
            items: [("", Extra::Int(0)); 4],
            len: 0,
        }
    }
}

impl<'a> Extras<'a> {
    /// Adds a field; past the fourth it is dropped (`inject` makes at most three).
    pub fn push(&mut self, item: (&'a str, Extra<'a>)) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = item;
            self.len += 1;
        }
    }
}

impl<'a> std::ops::Deref for Extras<'a> {
    type Target = [(&'a str, Extra<'a>)];

    fn deref(&self) -> &Self::Target {
        &self.items[..self.len]
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Json,
    /// `time<delim>tag<delim>json`, fluentd's out_file formatter.
    OutFile {
        delimiter: String,
        output_time: bool,
        output_tag: bool,
    },
    /// `time tag: json`, fluentd's stdout formatter.
    Stdout,
}

#[derive(Debug, Clone)]
pub struct Formatter {
    kind: Kind,
    time: TimeFormatter,
    inject: Inject,
}

impl Formatter {
    /// `default_type` is the plugin's default `<format> @type` (out_file for `file`, stdout
    /// for `stdout`).
    pub fn from_config(
        parent: &Element,
        format: Option<&Element>,
        inject: Inject,
        default_type: &str,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let empty;
        let element = match format {
            Some(element) => element,
            None => {
                empty = Element::empty("format", parent.location.clone());
                &empty
            }
        };
        let s = Section::new(element);
        let type_name = s.type_name().unwrap_or(default_type);
        let kind = match type_name {
            "json" => Kind::Json,
            "out_file" => Kind::OutFile {
                delimiter: match s.str("delimiter").unwrap_or("\t") {
                    "SPACE" | "space" => " ".into(),
                    "COMMA" | "comma" => ",".into(),
                    "TAB" | "tab" => "\t".into(),
                    other => other.into(),
                },
                output_time: s.bool("output_time")?.unwrap_or(true),
                output_tag: s.bool("output_tag")?.unwrap_or(true),
            },
            "stdout" => {
                if let Some(t) = s.str("output_type").filter(|t| *t != "json") {
                    return Err(ConfigError::at(
                        s.location(),
                        format!("stdout output_type '{t}' is not supported (supported: json)"),
                    ));
                }
                Kind::Stdout
            }
            other => {
                return Err(ConfigError::at(
                    s.location(),
                    format!(
                        "<format> @type '{other}' is not supported (supported: json, out_file, stdout)"
                    ),
                ));
            }
        };
        let time = match (&kind, s.str("time_format")) {
            (Kind::Stdout, None) => {
                TimeFormatter::new(Some("%Y-%m-%d %H:%M:%S.%N %z"), time_formatter(&s)?.zone())
                    .map_err(|e| ConfigError::at(s.location(), e))?
            }
            _ => time_formatter(&s)?,
        };
        let warnings = s.finish(&["add_newline", "newline", "json_parser"])?;
        let formatter = Self { kind, time, inject };
        Ok((formatter, warnings))
    }

    /// `<format> @type json` with no options: one JSON object per line.
    pub fn json() -> Self {
        Self {
            kind: Kind::Json,
            time: TimeFormatter::iso8601(Zone::Local),
            inject: Inject::default(),
        }
    }

    /// Appends one formatted line (with its newline) for `event` to `out`.
    pub fn format(
        &mut self,
        tag: &str,
        event: &Event,
        out: &mut Vec<u8>,
    ) -> Result<(), MsgpackError> {
        match &self.kind {
            Kind::Json => {}
            Kind::OutFile {
                delimiter,
                output_time,
                output_tag,
            } => {
                if *output_time {
                    out.extend_from_slice(self.time.format(event.time).as_bytes());
                    out.extend_from_slice(delimiter.as_bytes());
                }
                if *output_tag {
                    out.extend_from_slice(tag.as_bytes());
                    out.extend_from_slice(delimiter.as_bytes());
                }
            }
            Kind::Stdout => {
                out.extend_from_slice(self.time.format(event.time).as_bytes());
                out.push(b' ');
                out.extend_from_slice(tag.as_bytes());
                out.extend_from_slice(b": ");
            }
        }
        if self.inject.is_empty() {
            json::write_record(&event.record, &[], out)?;
        } else {
            self.write_injected(tag, event, out)?;
        }
        out.push(b'\n');
        Ok(())
    }

    fn write_injected(
        &mut self,
        tag: &str,
        event: &Event,
        out: &mut Vec<u8>,
    ) -> Result<(), MsgpackError> {
        let mut extras = Extras::default();
        self.inject.extras_into(tag, event.time, &mut extras);
        json::write_record(&event.record, &extras, out)
    }
}
