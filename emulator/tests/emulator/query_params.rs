//! Query parameters: every one the REST reference lists for a method is accepted, the ones that
//! change results are honoured, and unknown names or bad values get Google's 400
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/list#query-parameters>,
//! the system parameters of <https://cloud.google.com/apis/docs/system-parameters>).

use serde_json::{Value, json};

use crate::common::{Emulator, error_body, rows};

fn table_with_rows(emu: &Emulator) {
    emu.with_table(json!([
        {"name": "s", "type": "STRING"},
        {"name": "ts", "type": "TIMESTAMP"},
        {"name": "r", "type": "RECORD", "fields": [
            {"name": "a", "type": "INTEGER"}, {"name": "b", "type": "STRING"}]}
    ]));
    let all: Vec<Value> = (0..3)
        .map(|i| json!({"s": format!("row{i}"), "ts": "2026-11-25 10:00:00.250 UTC", "r": {"a": i, "b": "x"}}))
        .collect();
    assert_eq!(emu.insert_all("t", rows(&all)).0, 200);
}

#[test]
fn every_documented_parameter_is_accepted_by_its_method() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let system = "prettyPrint=false&quotaUser=me&userIp=10.0.0.1&key=k&access_token=t&oauth_token=t&alt=json&%24.xgafv=2&uploadType=media&upload_protocol=raw";
    let cases = [
        "/datasets/d?accessPolicyVersion=3&datasetView=FULL",
        "/datasets/d/tables?maxResults=10&pageToken=0",
        "/datasets/d/tables/t?view=STORAGE_STATS&selectedFields=s",
        "/datasets/d/tables/t/data?formatOptions.useInt64Timestamp=True&maxResults=2&startIndex=1&selectedFields=s,r.a",
        "/datasets/d/tables/t/data?formatOptions.timestampOutputFormat=FLOAT64&pageToken=1",
    ];
    for path in cases {
        let (status, body) = emu.get(&emu.api(&format!("{path}&{system}")));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = emu.post(
        &emu.api(&format!("/datasets/d/tables/t/insertAll?{system}")),
        &rows(&[json!({"s": "more"})]),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = emu.patch(
        &emu.api("/datasets/d/tables/t?autodetect_schema=false&prettyPrint=false"),
        &json!({"description": "d"}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = emu.delete(&emu.api("/datasets/d?deleteContents=True&quotaUser=me"));
    assert_eq!(status, 204, "{body}");
}

#[test]
fn unknown_names_and_bad_values_are_400_as_google_answers_them() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let (status, body) = emu.get(&emu.api("/datasets/d/tables/t/data?maxRows=2"));
    assert_eq!(status, 400);
    let message = "Invalid JSON payload received. Unknown name \"maxRows\": Cannot bind query parameter. Field 'maxRows' could not be found in request message.";
    assert_eq!(
        body,
        error_body(400, "badRequest", message, "INVALID_ARGUMENT")
    );
    // startIndex belongs to tabledata.list, not tables.get.
    let (status, _) = emu.get(&emu.api("/datasets/d/tables/t?startIndex=1"));
    assert_eq!(status, 400);
    let (status, body) = emu.get(&emu.api("/datasets/d/tables/t/data?maxResults=ten"));
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "Invalid value at 'max_results' (TYPE_UINT32), \"ten\""
    );
    for bad in [
        "/datasets/d/tables/t/data?formatOptions.useInt64Timestamp=yes",
        "/datasets/d/tables/t/data?startIndex=-1",
        "/datasets/d/tables/t/data?formatOptions.timestampOutputFormat=SECONDS",
        "/datasets/d/tables/t?view=ALL",
        "/datasets/d/tables/t?prettyPrint=maybe",
        "/datasets/d/tables/t?fields=schema(fields",
        "/datasets/d/tables/t?alt=proto",
        "/datasets/d?accessPolicyVersion=2",
        "/datasets/d/tables/t/data?formatOptions.useInt64Timestamp=true&formatOptions.timestampOutputFormat=ISO8601_STRING",
        "/datasets/d/tables/t/data?selectedFields=nope",
        "/datasets/d/tables/t/data?selectedFields=s.sub",
    ] {
        let (status, body) = emu.get(&emu.api(bad));
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[test]
fn answers_are_indented_unless_pretty_print_is_false() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let (status, content_type, pretty) = emu.get_raw(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(pretty.starts_with("{\n  \""), "{pretty}");
    let (_, _, compact) = emu.get_raw(&emu.api("/datasets/d/tables/t?prettyPrint=false"));
    assert!(!compact.contains('\n'), "{compact}");
    let a: Value = serde_json::from_str(&pretty).unwrap();
    let b: Value = serde_json::from_str(&compact).unwrap();
    assert_eq!(a, b);
    // Errors too.
    let (status, _, error) = emu.get_raw(&emu.api("/datasets/d/tables/nope?prettyPrint=False"));
    assert_eq!(status, 404);
    assert!(!error.contains('\n'), "{error}");
}

#[test]
fn fields_returns_a_partial_response_and_callback_wraps_it() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let (status, body) = emu.get(
        &emu.api("/datasets/d/tables/t?fields=numRows,tableReference/tableId,schema(fields(name))"),
    );
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"numRows": "3", "tableReference": {"tableId": "t"},
               "schema": {"fields": [{"name": "s"}, {"name": "ts"}, {"name": "r"}]}})
    );
    let (_, body) =
        emu.get(&emu.api("/datasets/d/tables/t/data?fields=totalRows,rows/f/v&maxResults=1"));
    assert_eq!(body["totalRows"], "3");
    assert!(body.get("kind").is_none(), "{body}");
    // A failed request keeps its whole error body.
    let (status, body) = emu.get(&emu.api("/datasets/d/tables/nope?fields=numRows"));
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], 404);
    let (status, content_type, text) =
        emu.get_raw(&emu.api("/datasets/d/tables/t?fields=numRows&callback=cb&prettyPrint=false"));
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    assert_eq!(text, "// API callback\ncb({\"numRows\":\"3\"});");
}

#[test]
fn selected_fields_return_those_columns_in_table_order() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let (status, page) = emu.list("t", "?selectedFields=r.b,s&maxResults=1");
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["rows"],
        json!([{"f": [{"v": "row0"}, {"v": {"f": [{"v": "x"}]}}]}])
    );
    // tables.get narrows the schema the same way.
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t?selectedFields=R.A"));
    assert_eq!(
        table["schema"],
        json!({"fields": [{"name": "r", "type": "RECORD", "fields": [{"name": "a", "type": "INTEGER"}]}]})
    );
}

#[test]
fn timestamp_output_formats_follow_the_format_options() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let cell = |query: &str| {
        let (status, page) = emu.list("t", &format!("?selectedFields=ts&maxResults=1&{query}"));
        assert_eq!(status, 200, "{query}: {page}");
        page["rows"][0]["f"][0]["v"].clone()
    };
    assert_eq!(cell(""), "1.79560080025E9");
    assert_eq!(
        cell("formatOptions.timestampOutputFormat=FLOAT64"),
        "1.79560080025E9"
    );
    assert_eq!(
        cell("formatOptions.useInt64Timestamp=true"),
        "1795600800250000"
    );
    assert_eq!(
        cell("formatOptions.useInt64Timestamp=false"),
        "1.79560080025E9"
    );
    assert_eq!(
        cell("formatOptions.timestampOutputFormat=INT64"),
        "1795600800250000"
    );
    assert_eq!(
        cell("formatOptions.timestampOutputFormat=ISO8601_STRING"),
        "2026-11-25T10:00:00.250000000000Z"
    );
}

#[test]
fn max_results_zero_counts_only_and_basic_view_drops_storage_statistics() {
    let emu = Emulator::start(&[]);
    table_with_rows(&emu);
    let (_, page) = emu.list("t", "?maxResults=0");
    assert_eq!(page["totalRows"], "3");
    assert!(
        page.get("rows").is_none() && page.get("pageToken").is_none(),
        "{page}"
    );
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t?view=BASIC"));
    assert!(
        table.get("numRows").is_none() && table.get("numBytes").is_none(),
        "{table}"
    );
    assert_eq!(table["schema"]["fields"].as_array().map(Vec::len), Some(3));
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t?view=FULL"));
    assert_eq!(table["numRows"], "3");
}

#[test]
fn tables_list_pages_with_max_results_and_page_tokens() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    for t in ["a", "b", "c"] {
        emu.create_table("d", t, json!({}));
    }
    let ids = |page: &Value| -> Vec<String> {
        page["tables"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        t["tableReference"]["tableId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, first) = emu.get(&emu.api("/datasets/d/tables?maxResults=2"));
    assert_eq!(ids(&first), ["a", "b"]);
    assert_eq!(first["totalItems"], 3);
    let token = first["nextPageToken"].as_str().unwrap().to_string();
    let (_, last) = emu.get(&emu.api(&format!(
        "/datasets/d/tables?maxResults=2&pageToken={token}"
    )));
    assert_eq!(ids(&last), ["c"]);
    assert!(last.get("nextPageToken").is_none(), "{last}");
}

#[test]
fn resources_carry_their_self_links() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "s", "type": "STRING"}]));
    let base = emu.url("/bigquery/v2/projects/proj/datasets/d");
    let (_, dataset) = emu.get(&emu.api("/datasets/d"));
    assert_eq!(dataset["selfLink"], base);
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(table["selfLink"], format!("{base}/tables/t"));
    assert_eq!(table["location"], "US");
}
