// Owns what a load job does with its data: gzip, encoding, reading rows (newline-delimited JSON
// or CSV), choosing the schema (the job's, the table's, or a detected one, with
// `schemaUpdateOptions`), validating every row, `maxBadRecords`, and BigQuery's errors for all of
// it. Pure over bytes and schemas: the job executor passes the destination table in and applies
// the outcome to the store, all or nothing.
//
// Errors are worded as BigQuery words them for uploaded data (observed answers quoted where the
// constants are); a failed job's `status.errors` starts with the summary that is also its
// `errorResult`, as r-dbi/bigrquery's `bq_job_wait` expects ("First error says to look in
// errors[]").

mod autodetect;
pub mod config;
mod delimited;
mod ndjson;

use std::borrow::Cow;
use std::io::Read;

use serde_json::{Map, Value};

pub use config::{CreateDisposition, LoadConfig, SourceFormat, TableRef, WriteDisposition};

use crate::error::ErrorProto;
use crate::schema::{
    FieldJson, FieldType, Mode, Problem, RowError, Schema, ValidateOptions, check_load_schema,
    validate_row,
};
use config::Encoding;

/// Every data error starts so ("Error while reading data, error message: JSON table encountered
/// too many errors, giving up. …", ossf/package-analysis#242, r-dbi/bigrquery tests).
pub const ERROR_PREFIX: &str = "Error while reading data, error message: ";

/// The `location` BigQuery gives errors in uploaded data (googleapis/google-cloud-python#3343:
/// "file-00000000: JSON parsing error in row starting at position 0: …").
pub const UPLOAD_FILE: &str = "file-00000000";

/// Row errors kept in a job's `status.errors` (BigQuery keeps "the first errors encountered").
pub const MAX_ROW_ERRORS: usize = 100;

/// Size limits of a load, settable by flags (BigQuery: 100 MB rows for CSV and JSON; files far
/// larger than the emulator holds in memory).
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Largest upload, and largest uncompressed data, in bytes.
    pub max_bytes: usize,
    /// Largest row in bytes.
    pub max_row_bytes: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_row_bytes: 100 * 1024 * 1024,
        }
    }
}

/// The destination table as the job finds it (`None` to `read` when it does not exist).
pub struct Destination<'a> {
    pub fields: Vec<FieldJson>,
    pub schema: &'a Schema,
}

/// A load that succeeds: the schema the table has afterwards and the rows to add.
#[derive(Debug)]
pub struct Loaded {
    pub fields: Vec<FieldJson>,
    pub schema: Schema,
    /// Whether `schema` differs from the table's (or the table is new).
    pub schema_changed: bool,
    pub rows: Vec<Map<String, Value>>,
    pub bad_records: u64,
    /// Errors of the rows skipped within `maxBadRecords`.
    pub errors: Vec<ErrorProto>,
    pub output_bytes: u64,
}

/// A load that fails: nothing is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub error_result: ErrorProto,
    pub errors: Vec<ErrorProto>,
}

impl Failed {
    /// A failure with one error, which BigQuery lists in `errors` too.
    pub fn single(error: ErrorProto) -> Self {
        Self {
            errors: vec![error.clone()],
            error_result: error,
        }
    }
}

/// Runs `data` (as uploaded: gzip or not) through `config` against the destination table.
pub fn read(
    data: &[u8],
    config: &LoadConfig,
    table: Option<Destination<'_>>,
    limits: &LoadLimits,
) -> Result<Loaded, Failed> {
    let text = decode(data, config.encoding, limits)?;
    match config.format {
        SourceFormat::Json => read_json(&text, config, table.as_ref(), limits),
        SourceFormat::Csv => read_csv(&text, config, table.as_ref(), limits),
    }
}

fn invalid(message: String) -> Failed {
    Failed::single(ErrorProto::invalid(message))
}

/// Inflates gzip (recognised by its magic bytes, as BigQuery does) within the size limit, and
/// turns ISO-8859-1 into UTF-8.
fn decode<'a>(
    data: &'a [u8],
    encoding: Encoding,
    limits: &LoadLimits,
) -> Result<Cow<'a, [u8]>, Failed> {
    let too_large = || {
        invalid(format!(
            "{ERROR_PREFIX}the data is larger than bigquery-emulator's load limit of {} bytes (--max-load-bytes).",
            limits.max_bytes
        ))
    };
    let inflated: Cow<'a, [u8]> = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .take(limits.max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("{ERROR_PREFIX}Error reading gzip data: {e}")))?;
        if out.len() > limits.max_bytes {
            return Err(too_large());
        }
        Cow::Owned(out)
    } else {
        if data.len() > limits.max_bytes {
            return Err(too_large());
        }
        Cow::Borrowed(data)
    };
    Ok(match encoding {
        Encoding::Utf8 => match inflated {
            Cow::Borrowed(b) => Cow::Borrowed(b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)),
            Cow::Owned(mut v) => {
                if v.starts_with(b"\xEF\xBB\xBF") {
                    v.drain(..3);
                }
                Cow::Owned(v)
            }
        },
        // Every ISO-8859-1 byte is the Unicode code point of the same number.
        Encoding::Latin1 => Cow::Owned(
            inflated
                .iter()
                .map(|b| char::from(*b))
                .collect::<String>()
                .into_bytes(),
        ),
    })
}

/// `p:d.t`, as BigQuery names tables in messages.
fn table_name(dest: &TableRef) -> String {
    format!("{}:{}.{}", dest.project, dest.dataset, dest.table)
}

fn schema_of(fields: &[FieldJson]) -> Result<Schema, Failed> {
    Schema::from_json(fields).map_err(|e| invalid(e.0))
}

/// The schema the rows are checked against and the table gets: the job's (checked against the
/// table's as `schemaUpdateOptions` allow), a detected one (`autodetect`), or the table's.
fn choose_schema(
    config: &LoadConfig,
    table: Option<&Destination<'_>>,
    detect: impl FnOnce() -> Vec<FieldJson>,
) -> Result<(Vec<FieldJson>, Schema, bool), Failed> {
    // "For normal tables, WRITE_TRUNCATE will always overwrite the schema" (JobConfigurationLoad
    // .schemaUpdateOptions); WRITE_TRUNCATE_DATA keeps it.
    let replaces =
        config.write == WriteDisposition::Truncate && config.destination.partition.is_none();
    let name = table_name(&config.destination);
    match (&config.schema, table) {
        (Some(given), None) => Ok((given.fields.clone(), given.schema.clone(), true)),
        (Some(given), Some(t)) => {
            if !replaces {
                check_load_schema(
                    t.schema,
                    &given.schema,
                    &name,
                    config.allow_field_addition,
                    config.allow_field_relaxation,
                )
                .map_err(|e| invalid(e.0))?;
            }
            let changed = given.schema != *t.schema;
            Ok((given.fields.clone(), given.schema.clone(), changed))
        }
        (None, table) if config.autodetect => {
            let detected = detect();
            match table {
                Some(t) if detected.is_empty() => Ok((t.fields.clone(), t.schema.clone(), false)),
                None if detected.is_empty() => {
                    Err(invalid("No schema specified on job or table.".into()))
                }
                None => Ok((detected.clone(), schema_of(&detected)?, true)),
                Some(_) if replaces => Ok((detected.clone(), schema_of(&detected)?, true)),
                Some(t) if config.allow_field_addition => {
                    let mut fields = t.fields.clone();
                    let added: Vec<FieldJson> = detected
                        .into_iter()
                        .filter(|d| t.schema.lookup(&d.name).is_none())
                        .collect();
                    let changed = !added.is_empty();
                    fields.extend(added);
                    Ok((fields.clone(), schema_of(&fields)?, changed))
                }
                Some(t) => Ok((t.fields.clone(), t.schema.clone(), false)),
            }
        }
        (None, Some(t)) => Ok((t.fields.clone(), t.schema.clone(), false)),
        (None, None) => Err(invalid("No schema specified on job or table.".into())),
    }
}

/// Counts rows and bad records as a load reads them, and gives up as BigQuery does once there
/// are more bad records than `maxBadRecords`.
struct Tally {
    format: SourceFormat,
    max_bad: u64,
    rows_read: u64,
    bad: u64,
    errors: Vec<ErrorProto>,
    good: Vec<Map<String, Value>>,
    output_bytes: u64,
}

impl Tally {
    fn new(config: &LoadConfig) -> Self {
        Self {
            format: config.format,
            max_bad: config.max_bad_records,
            rows_read: 0,
            bad: 0,
            errors: Vec::new(),
            good: Vec::new(),
            output_bytes: 0,
        }
    }

    fn good(&mut self, row: Map<String, Value>) {
        self.rows_read += 1;
        self.output_bytes += serde_json::to_string(&row).map_or(0, |s| s.len() as u64);
        self.good.push(row);
    }

    /// Records a bad row (`detail` without the preamble); `Err` once the job must give up.
    fn bad(&mut self, detail: String) -> Result<(), Failed> {
        self.rows_read += 1;
        self.bad += 1;
        if self.errors.len() < MAX_ROW_ERRORS {
            self.errors
                .push(ErrorProto::invalid(format!("{ERROR_PREFIX}{detail}")).at(UPLOAD_FILE));
        }
        if self.bad <= self.max_bad {
            return Ok(());
        }
        let (format, rows, errors) = (self.format.word(), self.rows_read, self.bad);
        // Observed (ossf/package-analysis#242, r-dbi/bigrquery): the table summary is the
        // errorResult and errors[0], the processing summary errors[1], then the rows' errors.
        let summary = ErrorProto::invalid(format!(
            "{ERROR_PREFIX}{format} table encountered too many errors, giving up. Rows: {rows}; errors: {errors}. Please look into the errors[] collection for more details."
        ));
        let processing = ErrorProto::invalid(format!(
            "{ERROR_PREFIX}{format} processing encountered too many errors, giving up. Rows: {rows}; errors: {errors}; max bad: {}; error percent: 0",
            self.max_bad
        ));
        let mut all = vec![summary.clone(), processing];
        all.append(&mut self.errors);
        Err(Failed {
            error_result: summary,
            errors: all,
        })
    }

    fn finish(self, fields: Vec<FieldJson>, schema: Schema, schema_changed: bool) -> Loaded {
        Loaded {
            fields,
            schema,
            schema_changed,
            rows: self.good,
            bad_records: self.bad,
            errors: self.errors,
            output_bytes: self.output_bytes,
        }
    }
}

/// A JSON row read from the data, or what is wrong with it.
type ParsedRow = Result<Map<String, Value>, String>;

fn read_json(
    text: &[u8],
    config: &LoadConfig,
    table: Option<&Destination<'_>>,
    limits: &LoadLimits,
) -> Result<Loaded, Failed> {
    let parsed: Vec<(u64, ParsedRow)> = ndjson::lines(text)
        .map(|line| (line.position, ndjson::parse(&line, limits.max_row_bytes)))
        .collect();
    let (fields, schema, changed) = choose_schema(config, table, || {
        let mut fields =
            autodetect::detect_json(parsed.iter().filter_map(|(_, r)| r.as_ref().ok()));
        // Columns in the order the data first names them.
        let mut order: Vec<String> = Vec::new();
        for line in ndjson::lines(text).take(autodetect::SAMPLE_ROWS) {
            for key in ndjson::key_order(&line).unwrap_or_default() {
                if !order.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
                    order.push(key);
                }
            }
        }
        fields.sort_by_key(|f| {
            order
                .iter()
                .position(|k| k.eq_ignore_ascii_case(&f.name))
                .unwrap_or(usize::MAX)
        });
        fields
    })?;
    let opts = ValidateOptions {
        ignore_unknown_values: config.ignore_unknown_values,
    };
    let mut tally = Tally::new(config);
    for (position, row) in parsed {
        let outcome = row.and_then(|obj| {
            validate_row(&schema, &Value::Object(obj), opts)
                .map_err(|errors| json_detail(&errors[0]))
        });
        match outcome {
            Ok(row) => tally.good(row),
            Err(detail) => tally.bad(format!(
                "JSON parsing error in row starting at position {position}: {detail}"
            ))?,
        }
    }
    Ok(tally.finish(fields, schema, changed))
}

/// A row error in the words of JSON loads: "No such field: a.b." (octo-sts/app#703), "Could not
/// convert value 'string_value: \"x\"' to integer. Field: x; Value: x" (r-dbi/bigrquery tests).
fn json_detail(e: &RowError) -> String {
    match &e.problem {
        Problem::UnknownField => format!("No such field: {}.", e.location),
        Problem::BadValue { ty, value } => {
            let field = e.location.rsplit('.').next().unwrap_or(&e.location);
            let field = field.split('[').next().unwrap_or(field);
            let (proto, plain) = match value {
                Value::String(s) => (format!("string_value: {value}"), s.clone()),
                Value::Number(n) => (format!("number_value: {n}"), n.to_string()),
                Value::Bool(b) => (format!("bool_value: {b}"), b.to_string()),
                other => (other.to_string(), other.to_string()),
            };
            format!(
                "Could not convert value '{proto}' to {}. Field: {field}; Value: {plain}",
                ty.error_name()
            )
        }
        Problem::MissingRequired | Problem::Shape => e.message.clone(),
    }
}

fn read_csv(
    text: &[u8],
    config: &LoadConfig,
    table: Option<&Destination<'_>>,
    limits: &LoadLimits,
) -> Result<Loaded, Failed> {
    let records = delimited::records(text, &config.csv, limits.max_row_bytes);
    let (header, start) = header_and_start(config, &records);
    let data = records.get(start..).unwrap_or_default();
    let (fields, schema, changed) = choose_schema(config, table, || {
        let rows: Vec<&[String]> = data
            .iter()
            .filter_map(|r| r.cells.as_deref().ok())
            .collect();
        autodetect::detect_csv(header, &rows)
    })?;
    if let Some(f) = schema
        .fields
        .iter()
        .find(|f| f.ty == FieldType::Record || f.mode == Mode::Repeated)
    {
        return Err(invalid(format!(
            "CSV data cannot be loaded into nested or repeated fields (field: {}); use NEWLINE_DELIMITED_JSON",
            f.name
        )));
    }
    let mut tally = Tally::new(config);
    for record in data {
        let outcome = match &record.cells {
            Ok(cells) => csv_row(&schema, cells, record, config),
            Err(detail) => Err(detail.clone()),
        };
        match outcome {
            Ok(row) => tally.good(row),
            Err(detail) => tally.bad(detail)?,
        }
    }
    Ok(tally.finish(fields, schema, changed))
}

/// The header row (when autodetect finds one) and the first data record. With autodetect,
/// `skipLeadingRows` N skips N-1 rows and looks for a header in row N; unset, it looks in the
/// first row (JobConfigurationLoad.skipLeadingRows).
fn header_and_start<'a>(
    config: &LoadConfig,
    records: &'a [delimited::Record],
) -> (Option<&'a [String]>, usize) {
    let skip = config.csv.skip_leading_rows;
    if !config.autodetect {
        return (None, skip.unwrap_or(0) as usize);
    }
    let candidate = match skip {
        Some(0) => return (None, 0),
        Some(n) => n as usize - 1,
        None => 0,
    };
    let Some(Ok(first)) = records.get(candidate).map(|r| r.cells.as_deref()) else {
        return (None, skip.unwrap_or(0) as usize);
    };
    let rest: Vec<&[String]> = records
        .iter()
        .skip(candidate + 1)
        .filter_map(|r| r.cells.as_deref().ok())
        .collect();
    if autodetect::looks_like_header(first, &rest) {
        (Some(first), candidate + 1)
    } else {
        (None, skip.unwrap_or(0) as usize)
    }
}

/// Is this cell NULL? The empty string by default; with a `nullMarker`, the marker (and an empty
/// cell is then an empty STRING or BYTES value, an error for other types).
fn is_null(cell: &str, null_marker: Option<&str>) -> bool {
    match null_marker {
        Some(marker) => cell == marker,
        None => cell.is_empty(),
    }
}

/// BOOL cells in CSV data take more spellings than JSON booleans.
fn csv_bool(cell: &str) -> Option<&'static str> {
    match cell.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some("true"),
        "false" | "f" | "no" | "n" | "0" => Some("false"),
        _ => None,
    }
}

/// `; line_number: 2 byte_offset_to_start_of_line: 17 column_index: 1 column_name: "ts"
/// column_type: TIMESTAMP value: "x"`, the tail BigQuery puts on CSV errors (observed, keboola
/// storage-api tests; DataTalksClub data-engineering-zoomcamp notes).
fn csv_location(
    record: &delimited::Record,
    schema: &Schema,
    index: usize,
    value: Option<&str>,
) -> String {
    let mut s = format!(
        "line_number: {} byte_offset_to_start_of_line: {} column_index: {index}",
        record.line, record.position
    );
    if let Some(f) = schema.fields.get(index) {
        s.push_str(&format!(
            " column_name: \"{}\" column_type: {}",
            f.name,
            f.ty.sql_name()
        ));
    }
    if let Some(v) = value {
        s.push_str(&format!(" value: \"{v}\""));
    }
    s
}

fn csv_row(
    schema: &Schema,
    cells: &[String],
    record: &delimited::Record,
    config: &LoadConfig,
) -> Result<Map<String, Value>, String> {
    let width = schema.fields.len();
    if cells.len() > width && !config.ignore_unknown_values {
        // Observed: "Too many values in row starting at position: 0." (embulk-output-bigquery#72).
        return Err(format!(
            "Too many values in row starting at position: {}.; {}",
            record.position,
            csv_location(record, schema, width, None)
        ));
    }
    if cells.len() < width && !config.csv.allow_jagged_rows {
        let last = width - 1;
        return Err(format!(
            "CSV table references column position {last}, but line contains only {} columns.; {}",
            cells.len(),
            csv_location(record, schema, last, None)
        ));
    }
    let mut obj = Map::new();
    for (field, cell) in schema.fields.iter().zip(cells) {
        if is_null(cell, config.csv.null_marker.as_deref()) {
            continue;
        }
        let value = match field.ty {
            FieldType::Boolean => csv_bool(cell).unwrap_or(cell.as_str()),
            _ => cell.as_str(),
        };
        obj.insert(field.name.clone(), Value::String(value.to_string()));
    }
    let opts = ValidateOptions {
        ignore_unknown_values: false,
    };
    validate_row(schema, &Value::Object(obj), opts).map_err(|errors| {
        let e = &errors[0];
        let index = schema.field_index(&e.location).unwrap_or(0);
        let cell = cells.get(index).map(String::as_str);
        let what = match &e.problem {
            Problem::BadValue {
                ty: FieldType::Timestamp,
                ..
            } => format!(
                "Could not parse '{}' as a timestamp. Required format is YYYY-MM-DD HH:MM[:SS[.SSSSSS]] or YYYY/MM/DD HH:MM[:SS[.SSSSSS]]",
                cell.unwrap_or_default()
            ),
            Problem::BadValue { .. } => "Unable to parse".to_string(),
            Problem::MissingRequired => "Required column value is missing".to_string(),
            Problem::UnknownField | Problem::Shape => e.message.clone(),
        };
        format!("{what}; {}", csv_location(record, schema, index, cell))
    })
}

#[cfg(test)]
mod tests;
