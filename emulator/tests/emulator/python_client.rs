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
