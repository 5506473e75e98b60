// Owns reading CSV data (with the `csv` crate): records with their line numbers and byte
// positions, quoting and delimiter settings, and the rows BigQuery refuses before any schema is
// applied (a quoted newline that is not allowed, a row over the size limit). Pure: no I/O.
//
// <https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-csv>.

use super::config::CsvOptions;

/// One CSV record: where it starts (byte offset and 1-based line) and its cells, or why it
/// cannot be read (BigQuery's message, without the "Error while reading data" preamble).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub position: u64,
    pub line: u64,
    pub cells: Result<Vec<String>, String>,
}

/// Every record of `data` (UTF-8) in order; blank lines are skipped.
pub fn records(data: &[u8], opts: &CsvOptions, max_row_bytes: usize) -> Vec<Record> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(opts.delimiter)
        .quote(opts.quote.unwrap_or(b'"'))
        .quoting(opts.quote.is_some())
        .double_quote(true)
        .from_reader(data);
    let mut out = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut lines = LineCounter::default();
    loop {
        let position = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // Reading from memory fails only on malformed input; report it on this row.
                out.push(Record {
                    position,
                    line: lines.line_at(data, position),
                    cells: Err(format!(
                        "Error detected while parsing row starting at position: {position}. Error: {e}."
                    )),
                });
                continue;
            }
        }
        // `position()` before the read may point at the line break that ended the previous
        // record; the record's own position is exact.
        let position = record.position().map_or(position, csv::Position::byte);
        // The csv crate counts blank lines before a record as part of it.
        let position = position
            + data
                .get(usize::try_from(position).unwrap_or(usize::MAX)..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| matches!(b, b'\n' | b'\r'))
                .count() as u64;
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        out.push(Record {
            position,
            // The csv crate's line numbers do not count blank lines; BigQuery's do.
            line: lines.line_at(data, position),
            cells: cells(&record, position, opts, max_row_bytes),
        });
    }
    out
}

/// 1-based line numbers of byte positions that only grow.
#[derive(Default)]
struct LineCounter {
    position: u64,
    breaks: u64,
}

impl LineCounter {
    fn line_at(&mut self, data: &[u8], position: u64) -> u64 {
        let from = usize::try_from(self.position).unwrap_or(usize::MAX);
        let to = usize::try_from(position).unwrap_or(usize::MAX);
        if let Some(span) = data.get(from..to) {
            self.breaks += span.iter().filter(|b| **b == b'\n').count() as u64;
            self.position = position;
        }
        self.breaks + 1
    }
}

fn cells(
    record: &csv::ByteRecord,
    position: u64,
    opts: &CsvOptions,
    max_row_bytes: usize,
) -> Result<Vec<String>, String> {
    let size = record.as_slice().len();
    if size > max_row_bytes {
        return Err(format!(
            "Row size is larger than: {max_row_bytes}. Row starting at position: {position}."
        ));
    }
    let mut cells = Vec::with_capacity(record.len());
    for raw in record {
        let cell = std::str::from_utf8(raw).map_err(|_| {
            format!(
                "Error detected while parsing row starting at position: {position}. Error: Bad character (ASCII 0) encountered or invalid UTF-8."
            )
        })?;
        // A line break inside a field can only come from quotes; BigQuery reads such a row as
        // an unterminated quote unless allowQuotedNewlines is set.
        if !opts.allow_quoted_newlines && cell.contains(['\n', '\r']) {
            return Err(format!(
                "Error detected while parsing row starting at position: {position}. Error: Missing close double quote (\") character."
            ));
        }
        cells.push(cell.to_string());
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells_of(data: &str, opts: &CsvOptions) -> Vec<Result<Vec<String>, String>> {
        records(data.as_bytes(), opts, 1000)
            .into_iter()
            .map(|r| r.cells)
            .collect()
    }

    #[test]
    fn quoting_delimiters_and_positions() {
        let data = "a,\"b,c\",\"say \"\"hi\"\"\"\n\nx,y\r\nlast,\"multi\nline\"\n";
        let recs = records(data.as_bytes(), &CsvOptions::default(), 1000);
        assert_eq!(recs.len(), 3, "{recs:?}");
        assert_eq!(recs[0].cells.as_ref().unwrap(), &["a", "b,c", "say \"hi\""]);
        assert_eq!((recs[0].position, recs[0].line), (0, 1));
        assert_eq!(recs[1].cells.as_ref().unwrap(), &["x", "y"]);
        assert_eq!(recs[1].line, 3);
        assert!(
            recs[2]
                .cells
                .as_ref()
                .unwrap_err()
                .contains("Missing close double quote")
        );
        let allowed = CsvOptions {
            allow_quoted_newlines: true,
            ..CsvOptions::default()
        };
        assert_eq!(
            cells_of(data, &allowed)[2].as_ref().unwrap(),
            &["last", "multi\nline"]
        );
        let tabs = CsvOptions {
            delimiter: b'\t',
            quote: None,
            ..CsvOptions::default()
        };
        assert_eq!(
            cells_of("a\"b\tc\n", &tabs)[0].as_ref().unwrap(),
            &["a\"b", "c"]
        );
    }
}
