//! Google's own Python client (PyPI google-cloud-bigquery, pinned in
//! tests/clients/requirements.txt) against the emulator: what a user who opens the demo's data
//! with the client they already use does. The script asserts what the client reads back as
//! Python values; these tests check its facts against the emulator's own counters.

use crate::common::{Emulator, run_client};

#[test]
fn google_cloud_bigquery_creates_inserts_deduplicates_and_reads_back() {
    let emu = Emulator::start(&[]);
    let facts = run_client("google_cloud_bigquery.py", emu.port, &["roundtrip"]);
    // Three rows inserted twice with the same insertIds, then a request with one bad row:
    // three stored, whatever the client says.
    assert_eq!(facts["num_rows"], 3, "{facts}");
    assert_eq!(emu.count_in("demo", "events"), 3);
    let stats = emu.stats();
    assert_eq!(stats["rows_deduplicated"], 3, "{stats}");
    assert_eq!(stats["rows_invalid"], 1, "{stats}");
}

#[test]
fn google_cloud_bigquery_update_table_evolves_the_schema_with_etags() {
    let emu = Emulator::start(&["--schema-update-delay-ms", "0"]);
    let facts = run_client("google_cloud_bigquery.py", emu.port, &["schema_update"]);
    assert_eq!(facts["columns"], 4, "{facts}");
    assert_eq!(emu.count_in("evo", "logs"), 1);
    let (_, table) = emu.get(&emu.api("/datasets/evo/tables/logs"));
    assert_eq!(table["description"], "evolved");
    assert_eq!(table["schema"]["fields"][1]["fields"][1]["name"], "path");
}

#[test]
fn google_cloud_bigquery_loads_files_polls_jobs_and_reads_their_errors() {
    // Jobs take 200 ms, so the client must poll them (job.result()).
    let emu = Emulator::start(&["--job-delay-ms", "200"]);
    let facts = run_client("google_cloud_bigquery.py", emu.port, &["load_jobs"]);
    assert_eq!(facts["rows"], 4, "{facts}");
    assert_eq!(facts["jobs"], 5, "{facts}");
    assert_eq!(emu.count_in("loads", "events"), 4);
    assert_eq!(emu.count_in("loads", "auto"), 1);
    let stats = emu.stats();
    assert_eq!(stats["jobs_inserted"], 5, "{stats}");
    assert_eq!(stats["jobs_failed"], 1, "{stats}");
    assert_eq!(stats["jobs_duplicate"], 2, "{stats}");
    assert_eq!(stats["rows_loaded"], 5, "{stats}");
    assert_eq!(stats["load_bad_records"], 1, "{stats}");
}
