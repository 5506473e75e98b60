//! The row converter and its JSON encoder on arbitrary records, under schemas of every type
//! and mode and both conversions: a record may be refused, never panic; a row written is valid
//! JSON, and the same writer writes the same row again.
#![no_main]

include!("common.rs");

#[allow(dead_code, unused_imports)]
#[path = "../../src/format"]
mod format {
    pub mod json;
}
#[allow(dead_code, unused_imports)]
#[path = "../../src/fluentd"]
mod fluentd {
    pub mod ruby;
}
#[allow(dead_code, unused_imports)]
#[path = "../../src/output"]
mod output {
    #[path = "bigquery"]
    pub mod bigquery {
        pub mod convert;
        pub mod rows;
        pub mod schema;
    }
}

use format::json::Extra;
use libfuzzer_sys::fuzz_target;
use output::bigquery::rows::{Conversion, RowWriter};
use output::bigquery::schema::Schema;
use std::sync::OnceLock;

/// Every type in every mode, and a nested record, under short names a fuzzer finds.
fn schemas() -> &'static [Schema] {
    static SCHEMAS: OnceLock<Vec<Schema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let types = [
            "STRING", "BYTES", "INTEGER", "FLOAT", "NUMERIC", "BIGNUMERIC", "BOOLEAN",
            "TIMESTAMP", "DATE", "TIME", "DATETIME", "GEOGRAPHY", "JSON",
        ];
        let mut schemas = Vec::new();
        for mode in ["NULLABLE", "REQUIRED", "REPEATED"] {
            let mut fields: Vec<serde_json::Value> = types
                .iter()
                .enumerate()
                .map(|(i, ty)| {
                    let name = char::from(b'a' + i as u8).to_string();
                    serde_json::json!({"name": name, "type": ty, "mode": mode})
                })
                .collect();
            fields.push(serde_json::json!({"name": "r", "type": "RECORD", "mode": mode,
                "fields": [{"name": "a", "type": "INTEGER"}, {"name": "b", "type": "STRING", "mode": "REPEATED"}]}));
            if let Ok(schema) = Schema::from_json(&serde_json::Value::Array(fields)) {
                schemas.push(schema);
            }
        }
        schemas
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, record)) = data.split_first() else {
        return;
    };
    let schemas = schemas();
    let schema = &schemas[usize::from(pick) % schemas.len()];
    let conversion = if pick & 0x80 == 0 {
        Conversion::Strict
    } else {
        Conversion::Compat
    };
    let extras = [("t", Extra::Time(event::EventTime::new(1_700_000_000, 5))), ("s", Extra::Str("x"))];
    let extras = if pick & 0x40 == 0 { &extras[..] } else { &[][..] };
    let mut writer = RowWriter::new(Some(schema), conversion);
    let mut first = Vec::new();
    if writer.write(record, extras, &mut first).is_err() {
        assert!(first.is_empty(), "a refused record leaves the output as it was");
        return;
    }
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&first) {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(&first));
    }
    let mut again = Vec::new();
    assert!(writer.write(record, extras, &mut again).is_ok());
    assert_eq!(first, again, "remembered keys changed the row");
});
