// Owns the query parameters of every BigQuery method the emulator serves: which names each method
// accepts (Google's system parameters included), their types, and Google's errors for the rest.
// Must not act on them: handlers read typed values from `Params`, `shape` applies the system ones.
//
// The lists are the parameters of the BigQuery v2 discovery document (bigquery-api.json,
// revision 20260811) for each method, plus the system parameters every Google API takes
// (`$.xgafv`, `access_token`, `alt`, `callback`, `fields`, `key`, `oauth_token`, `prettyPrint`,
// `quotaUser`, `upload_protocol`, `uploadType`, and the retired `userIp`). Google's front end
// answers an unknown name or a value of the wrong type with 400 before the method runs; the
// messages below are the ones its JSON transcoder gives (`Cannot bind query parameter`,
// `Invalid value at '…' (TYPE_…), "…"`).

use crate::error::ApiError;

use super::shape::FieldMask;

/// The type a parameter's value must parse as.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Int32,
    UInt32,
    UInt64,
    Text,
    /// An enum: one of the listed names.
    Enum(&'static str, &'static [&'static str]),
    /// The `fields` partial-response selector.
    FieldMask,
}

impl Kind {
    /// The type name Google's transcoder puts in `Invalid value at` messages.
    fn type_name(self) -> String {
        match self {
            Kind::Bool => "TYPE_BOOL".into(),
            Kind::Int32 => "TYPE_INT32".into(),
            Kind::UInt32 => "TYPE_UINT32".into(),
            Kind::UInt64 => "TYPE_UINT64".into(),
            Kind::Text | Kind::FieldMask => "TYPE_STRING".into(),
            Kind::Enum(name, _) => format!("type.googleapis.com/{name}"),
        }
    }
}

/// One accepted parameter: its name on the wire, the proto field Google names in errors, its type.
#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    field: &'static str,
    kind: Kind,
}

const fn spec(name: &'static str, field: &'static str, kind: Kind) -> Spec {
    Spec { name, field, kind }
}

/// The parameters one method accepts besides the system ones.
pub struct Method(&'static [Spec]);

const SYSTEM: &[Spec] = &[
    spec("$.xgafv", "$.xgafv", Kind::Enum("$.xgafv", &["1", "2"])),
    spec("access_token", "access_token", Kind::Text),
    spec("alt", "alt", Kind::Enum("alt", &["json", "media", "proto"])),
    spec("callback", "callback", Kind::Text),
    spec("fields", "fields", Kind::FieldMask),
    spec("key", "key", Kind::Text),
    spec("oauth_token", "oauth_token", Kind::Text),
    spec("prettyPrint", "pretty_print", Kind::Bool),
    spec("quotaUser", "quota_user", Kind::Text),
    spec("upload_protocol", "upload_protocol", Kind::Text),
    spec("uploadType", "upload_type", Kind::Text),
    spec("userIp", "user_ip", Kind::Text),
];

const ACCESS_POLICY_VERSION: Spec =
    spec("accessPolicyVersion", "access_policy_version", Kind::Int32);

pub const DATASETS_INSERT: Method = Method(&[ACCESS_POLICY_VERSION]);
pub const DATASETS_GET: Method = Method(&[
    ACCESS_POLICY_VERSION,
    spec(
        "datasetView",
        "dataset_view",
        Kind::Enum(
            "google.cloud.bigquery.v2.GetDatasetRequest.DatasetView",
            &["DATASET_VIEW_UNSPECIFIED", "METADATA", "ACL", "FULL"],
        ),
    ),
]);
pub const DATASETS_DELETE: Method =
    Method(&[spec("deleteContents", "delete_contents", Kind::Bool)]);

pub const TABLES_INSERT: Method = Method(&[]);
pub const TABLES_GET: Method = Method(&[
    spec("selectedFields", "selected_fields", Kind::Text),
    spec(
        "view",
        "view",
        Kind::Enum(
            "google.cloud.bigquery.v2.GetTableRequest.TableMetadataView",
            &[
                "TABLE_METADATA_VIEW_UNSPECIFIED",
                "BASIC",
                "STORAGE_STATS",
                "FULL",
            ],
        ),
    ),
]);
pub const TABLES_LIST: Method = Method(&[
    spec("maxResults", "max_results", Kind::UInt32),
    spec("pageToken", "page_token", Kind::Text),
]);
/// tables.patch and tables.update take the same parameters.
pub const TABLES_UPDATE: Method =
    Method(&[spec("autodetect_schema", "autodetect_schema", Kind::Bool)]);
pub const TABLES_DELETE: Method = Method(&[]);

pub const TABLEDATA_INSERT_ALL: Method = Method(&[]);
pub const TABLEDATA_LIST: Method = Method(&[
    spec(
        "formatOptions.timestampOutputFormat",
        "format_options.timestamp_output_format",
        Kind::Enum(
            "google.cloud.bigquery.v2.DataFormatOptions.TimestampOutputFormat",
            &[
                "TIMESTAMP_OUTPUT_FORMAT_UNSPECIFIED",
                "FLOAT64",
                "INT64",
                "ISO8601_STRING",
            ],
        ),
    ),
    spec(
        "formatOptions.useInt64Timestamp",
        "format_options.use_int64_timestamp",
        Kind::Bool,
    ),
    spec("maxResults", "max_results", Kind::UInt32),
    spec("pageToken", "page_token", Kind::Text),
    spec("selectedFields", "selected_fields", Kind::Text),
    spec("startIndex", "start_index", Kind::UInt64),
]);

const PROJECTION: Spec = spec(
    "projection",
    "projection",
    Kind::Enum(
        "google.cloud.bigquery.v2.ListJobsRequest.Projection",
        &["full", "minimal", "FULL", "MINIMAL"],
    ),
);

pub const JOBS_INSERT: Method = Method(&[]);
/// google-cloud-bigquery sends `projection=full` with jobs.get and jobs.cancel
/// (`Client.get_job`, `Client.cancel_job`), which the discovery document lists for jobs.list
/// only; BigQuery accepts it, so the emulator does.
pub const JOBS_GET: Method = Method(&[spec("location", "location", Kind::Text), PROJECTION]);
pub const JOBS_CANCEL: Method = Method(&[spec("location", "location", Kind::Text), PROJECTION]);
/// The discovery document spells the enums in lower case; the proto names are accepted too.
pub const JOBS_LIST: Method = Method(&[
    spec("allUsers", "all_users", Kind::Bool),
    spec("maxCreationTime", "max_creation_time", Kind::UInt64),
    spec("maxResults", "max_results", Kind::UInt32),
    spec("minCreationTime", "min_creation_time", Kind::UInt64),
    spec("pageToken", "page_token", Kind::Text),
    spec("parentJobId", "parent_job_id", Kind::Text),
    PROJECTION,
    spec(
        "stateFilter",
        "state_filter",
        Kind::Enum(
            "google.cloud.bigquery.v2.ListJobsRequest.StateFilter",
            &["done", "pending", "running", "DONE", "PENDING", "RUNNING"],
        ),
    ),
]);
/// The upload endpoint: `uploadType` is a system parameter; `upload_id` names a resumable
/// session in the session URI the emulator hands out.
pub const UPLOAD: Method = Method(&[spec("upload_id", "upload_id", Kind::Text)]);

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Bool(bool),
    Int(i64),
    Text(String),
}

/// The checked parameters of one request. A name given twice takes its last value.
#[derive(Debug, Default)]
pub struct Params {
    values: Vec<(&'static str, Val)>,
}

impl Params {
    fn get(&self, name: &str) -> Option<&Val> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(Val::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An integer parameter (`Int32`, `UInt32` and `UInt64` all fit: u64 values above i64::MAX
    /// are refused at parse time as BigQuery has no table that long).
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(Val::Int(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Val::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// Every value of a repeated parameter (`stateFilter=done&stateFilter=running`), in order.
    pub fn texts(&self, name: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| match v {
                Val::Text(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Checks the query string of a request to `method` and returns its typed parameters.
pub fn parse(raw: Option<&str>, method: &Method) -> Result<Params, ApiError> {
    let mut params = Params::default();
    let Some(raw) = raw else {
        return Ok(params);
    };
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        let spec = method
            .0
            .iter()
            .chain(SYSTEM)
            .find(|s| s.name == name)
            .ok_or_else(|| unknown(&name))?;
        let val = parse_value(spec, &value).ok_or_else(|| bad_value(spec, &value))?;
        params.values.push((spec.name, val));
    }
    // `media` and `proto` are valid names, but the emulator writes JSON only: say so rather than
    // answer JSON to a client that asked for something else.
    if let Some(alt) = params.text("alt").filter(|a| *a != "json") {
        return Err(ApiError::bad_request(format!(
            "alt={alt} is not supported by bigquery-emulator, which answers alt=json only"
        )));
    }
    Ok(params)
}

fn parse_value(spec: &Spec, value: &str) -> Option<Val> {
    Some(match spec.kind {
        // Google's front end takes booleans in any case: google-cloud-bigquery sends `True`.
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" => Val::Bool(true),
            "false" => Val::Bool(false),
            _ => return None,
        },
        Kind::Int32 => Val::Int(i64::from(value.parse::<i32>().ok()?)),
        Kind::UInt32 => Val::Int(i64::from(value.parse::<u32>().ok()?)),
        Kind::UInt64 => Val::Int(i64::try_from(value.parse::<u64>().ok()?).ok()?),
        Kind::Text => Val::Text(value.to_string()),
        Kind::Enum(_, names) => {
            let name = names.iter().find(|n| **n == value)?;
            Val::Text((*name).to_string())
        }
        Kind::FieldMask => {
            FieldMask::parse(value).ok()?;
            Val::Text(value.to_string())
        }
    })
}

/// Google's answer to a parameter the method does not have.
fn unknown(name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter. Field '{name}' could not be found in request message."
    ))
}

/// Google's answer to a value that does not parse as the parameter's type.
fn bad_value(spec: &Spec, value: &str) -> ApiError {
    if matches!(spec.kind, Kind::FieldMask) {
        return ApiError::bad_request(format!("Invalid field selection {value}"));
    }
    ApiError::bad_request(format!(
        "Invalid value at '{}' ({}), \"{value}\"",
        spec.field,
        spec.kind.type_name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_method_parameters_are_typed() {
        let p = parse(
            Some("formatOptions.useInt64Timestamp=True&prettyPrint=false&maxResults=5&startIndex=7&quotaUser=me&%24.xgafv=2"),
            &TABLEDATA_LIST,
        )
        .unwrap();
        assert_eq!(p.bool("formatOptions.useInt64Timestamp"), Some(true));
        assert_eq!(p.bool("prettyPrint"), Some(false));
        assert_eq!(p.int("maxResults"), Some(5));
        assert_eq!(p.int("startIndex"), Some(7));
        assert_eq!(p.text("quotaUser"), Some("me"));
    }

    #[test]
    fn unknown_names_and_bad_values_are_refused_as_google_does() {
        let e = parse(Some("bogus=1"), &TABLES_GET).unwrap_err();
        assert_eq!(e.reason, "badRequest");
        assert!(e.message.contains("Unknown name \"bogus\""), "{e}");
        // A parameter of another method is unknown here.
        assert!(parse(Some("startIndex=1"), &TABLES_GET).is_err());
        let e = parse(Some("maxResults=-1"), &TABLEDATA_LIST).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid value at 'max_results' (TYPE_UINT32), \"-1\""
        );
        assert!(parse(Some("view=EVERYTHING"), &TABLES_GET).is_err());
        assert!(parse(Some("prettyPrint=yes"), &TABLES_GET).is_err());
        assert!(parse(Some("fields=a("), &TABLES_GET).is_err());
    }
}
