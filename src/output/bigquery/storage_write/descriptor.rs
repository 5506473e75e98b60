//! The writer schema of the Storage Write API: a self-contained proto2 `DescriptorProto` built
//! at run time from a table's schema (nested RECORDs as nested types), with the wire type each
//! column is written as. Pure; field numbers are a column's position among its siblings + 1,
//! the numbers the protobuf encoder (`encoder.rs`) writes.
//!
//! Types per BigQuery's "Supported protocol buffer data types"
//! (https://cloud.google.com/bigquery/docs/write-api#data_type_conversions).

use crate::output::bigquery::schema::{Field, FieldMode, FieldType, Schema};
use bq_storage_proto::prost_types::field_descriptor_proto::{Label, Type};
use bq_storage_proto::prost_types::{DescriptorProto, FieldDescriptorProto};

/// The root message's name (the descriptor has no package; BigQuery needs none).
const ROOT: &str = "Row";

/// The proto type a column is written as.
pub fn proto_type(ty: FieldType) -> Type {
    match ty {
        FieldType::String
        | FieldType::Geography
        | FieldType::Json
        | FieldType::Numeric
        | FieldType::BigNumeric
        | FieldType::Time
        | FieldType::DateTime => Type::String,
        FieldType::Bytes => Type::Bytes,
        FieldType::Integer | FieldType::Timestamp => Type::Int64,
        FieldType::Date => Type::Int32,
        FieldType::Float => Type::Double,
        FieldType::Boolean => Type::Bool,
        FieldType::Record => Type::Message,
    }
}

/// The descriptor of rows of `schema`.
pub fn descriptor(schema: &Schema) -> DescriptorProto {
    message(ROOT, ROOT, &schema.fields)
}

/// A message named `name` (full name `path`) for `fields`; RECORD columns become nested types
/// named after their column (`F_<column>`, so a column name never collides with a type name).
fn message(name: &str, path: &str, fields: &[Field]) -> DescriptorProto {
    let mut out = DescriptorProto {
        name: Some(name.to_owned()),
        ..DescriptorProto::default()
    };
    for (i, field) in fields.iter().enumerate() {
        let ty = proto_type(field.field_type);
        let mut proto = FieldDescriptorProto {
            name: Some(field.name.clone()),
            number: Some(i as i32 + 1),
            // REQUIRED columns stay optional in the descriptor: a missing value is then
            // BigQuery's row error (as with insertAll), not a message that will not parse.
            label: Some(if field.mode == FieldMode::Repeated {
                Label::Repeated
            } else {
                Label::Optional
            } as i32),
            r#type: Some(ty as i32),
            ..FieldDescriptorProto::default()
        };
        if ty == Type::Message {
            let nested = format!("F_{}", field.name);
            let nested_path = format!("{path}.{nested}");
            proto.type_name = Some(format!(".{nested_path}"));
            out.nested_type
                .push(message(&nested, &nested_path, &field.fields));
        }
        out.field.push(proto);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_column_type_has_its_wire_type_and_records_nest() {
        let schema = Schema::from_json(&json!([
            {"name": "s", "type": "STRING", "mode": "REQUIRED"},
            {"name": "ts", "type": "TIMESTAMP"},
            {"name": "d", "type": "DATE"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "r", "type": "RECORD", "mode": "REPEATED", "fields": [
                {"name": "n", "type": "NUMERIC"},
                {"name": "inner", "type": "RECORD", "fields": [{"name": "b", "type": "BYTES"}]}
            ]}
        ]))
        .unwrap();
        let d = descriptor(&schema);
        assert_eq!(d.name(), "Row");
        let names: Vec<_> = d.field.iter().map(|f| (f.name(), f.number())).collect();
        assert_eq!(
            names,
            [("s", 1), ("ts", 2), ("d", 3), ("tags", 4), ("r", 5)]
        );
        assert_eq!(d.field[0].label(), Label::Optional);
        assert_eq!(d.field[1].r#type(), Type::Int64);
        assert_eq!(d.field[2].r#type(), Type::Int32);
        assert_eq!(d.field[3].label(), Label::Repeated);
        assert_eq!(d.field[4].r#type(), Type::Message);
        assert_eq!(d.field[4].type_name(), ".Row.F_r");
        let r = &d.nested_type[0];
        assert_eq!(r.name(), "F_r");
        assert_eq!(r.field[0].r#type(), Type::String);
        assert_eq!(r.field[1].type_name(), ".Row.F_r.F_inner");
        assert_eq!(r.nested_type[0].field[0].r#type(), Type::Bytes);
    }
}
