// Owns rules about a table resource beyond its schema: partitioning and clustering checked
// against the schema, and the etag chain. Pure: no I/O, no HTTP.

use base64::Engine;
use serde_json::Value;

use crate::schema::{FieldType, Mode, Schema, SchemaError};

/// Checks timePartitioning and clustering against the schema, as tables.insert does (and a load
/// job that creates its table).
pub fn check_layout(resource: &Value, schema: &Schema) -> Result<(), SchemaError> {
    if let Some(tp) = resource.get("timePartitioning").filter(|v| !v.is_null()) {
        let kind = tp.get("type").and_then(Value::as_str).unwrap_or("DAY");
        if !["DAY", "HOUR", "MONTH", "YEAR"].contains(&kind) {
            return Err(SchemaError(format!(
                "Invalid value for timePartitioning.type: {kind}"
            )));
        }
        if let Some(field) = tp.get("field").and_then(Value::as_str) {
            let f = schema.lookup(field).ok_or_else(|| {
                SchemaError(format!(
                    "The field specified for partitioning cannot be found in the schema: {field}"
                ))
            })?;
            let ok = matches!(
                f.ty,
                FieldType::Timestamp | FieldType::Date | FieldType::Datetime
            );
            if !ok || f.mode == Mode::Repeated {
                return Err(SchemaError(format!(
                    "The field specified for time partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type found is: {}.",
                    f.ty.canonical()
                )));
            }
        }
    }
    if let Some(fields) = resource
        .pointer("/clustering/fields")
        .and_then(Value::as_array)
    {
        if fields.len() > 4 {
            return Err(SchemaError(
                "Too many clustering fields: at most 4 are allowed.".into(),
            ));
        }
        for f in fields {
            let name = f.as_str().unwrap_or_default();
            if schema.lookup(name).is_none() {
                return Err(SchemaError(format!(
                    "The field specified for clustering cannot be found in the schema.  Invalid field: {name}."
                )));
            }
        }
    }
    Ok(())
}

/// A new etag for a resource (table or job) modified at `modified_ms`: 16 bytes in base64, as BigQuery's look
/// ("Nxc2m3B3ZcF2LP1cUz6T8g=="). Chained on the previous etag, so two changes in the same
/// millisecond still differ; stored in the resource, so it survives a restart.
pub fn next_etag(key: &str, previous: &str, modified_ms: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut bytes = Vec::with_capacity(16);
    for salt in [0u8, 1] {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, key, previous, modified_ms).hash(&mut h);
        bytes.extend_from_slice(&h.finish().to_be_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
