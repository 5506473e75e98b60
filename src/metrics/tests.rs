use super::*;

fn status(total_limit: usize, stage_bytes: usize, queue_bytes: usize) -> BufferStatus {
    BufferStatus {
        stage_length: 1,
        queue_length: 2,
        stage_bytes,
        queue_bytes,
        total_limit,
        ..BufferStatus::default()
    }
}

struct Fake {
    buffer: BufferStatus,
    detail: SinkDetail,
    missing: Vec<String>,
    plugins: Vec<(&'static str, &'static str, bool, PluginCounters)>,
}

impl Fake {
    fn new(buffer: BufferStatus, detail: SinkDetail) -> Self {
        Self {
            buffer,
            detail,
            missing: Vec::new(),
            plugins: Vec::new(),
        }
    }
}

impl Observe for Fake {
    fn outputs(&self, visit: &mut dyn FnMut(&OutputStatus<'_>)) {
        visit(&OutputStatus {
            plugin_id: "bq",
            type_name: "bigquery_insert",
            counts: OutputCounts {
                emit_records: 7,
                ..OutputCounts::default()
            },
            buffer: Some(self.buffer.clone()),
            sink: Some(SinkStatus {
                tables_created: 0,
                missing_datasets: self.missing.clone(),
                detail: &self.detail,
            }),
        });
        for (id, type_name, _, counters) in &self.plugins {
            if *type_name != "grep" {
                visit(&OutputStatus {
                    plugin_id: id,
                    type_name,
                    counts: counters.counts(),
                    buffer: None,
                    sink: None,
                });
            }
        }
    }

    fn plugins(&self, visit: &mut dyn FnMut(&PluginStatus<'_>)) {
        for (id, type_name, drops, counters) in &self.plugins {
            visit(&PluginStatus {
                plugin_id: id,
                type_name,
                drops: *drops,
                counters,
            });
        }
    }

    fn unmatched_events(&self) -> u64 {
        3
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[test]
fn fluentd_output_status_families_carry_plugin_id_and_type_as_gauges() {
    let metrics = Metrics::new();
    metrics.set_observer(Arc::new(Fake::new(
        status(1000, 100, 150),
        SinkDetail::default(),
    )));
    let text = metrics.render();
    assert!(text.contains("# TYPE fluentd_output_status_emit_records gauge"));
    assert_eq!(
        line(&text, "fluentd_output_status_emit_records{"),
        r#"fluentd_output_status_emit_records{plugin_id="bq",type="bigquery_insert"} 7"#
    );
    assert_eq!(
        line(&text, "fluentd_output_status_buffer_total_bytes{"),
        r#"fluentd_output_status_buffer_total_bytes{plugin_id="bq",type="bigquery_insert"} 250"#
    );
    assert_eq!(
        line(&text, "fluentd_output_status_buffer_available_space_ratio{"),
        r#"fluentd_output_status_buffer_available_space_ratio{plugin_id="bq",type="bigquery_insert"} 75"#
    );
    assert_eq!(
        line(&text, "fluentd_status_buffer_queue_length{"),
        r#"fluentd_status_buffer_queue_length{plugin_id="bq",plugin_category="output",type="bigquery_insert"} 2"#
    );
    assert_eq!(
        line(&text, "bqforward_router_unmatched_events_total"),
        "bqforward_router_unmatched_events_total 3"
    );
}

#[test]
fn readiness_needs_listeners_and_buffers_below_high_water() {
    let metrics = Metrics::new();
    metrics.set_observer(Arc::new(Fake::new(
        status(1000, 500, 450),
        SinkDetail::default(),
    )));
    assert!(metrics.readiness().is_err(), "not listening yet");
    metrics.set_listening(true);
    let why = metrics.readiness().unwrap_err();
    assert!(why.contains("bq"), "{why}");

    let metrics = Metrics::new();
    metrics.set_listening(true);
    metrics.set_observer(Arc::new(Fake::new(
        status(1000, 500, 300),
        SinkDetail::default(),
    )));
    assert_eq!(metrics.readiness(), Ok(()));

    let metrics = Metrics::new();
    metrics.set_listening(true);
    let mut fake = Fake::new(status(1000, 0, 0), SinkDetail::default());
    fake.missing = vec!["p.logs".into()];
    metrics.set_observer(Arc::new(fake));
    assert_eq!(
        metrics.readiness(),
        Err("bq: dataset p.logs not found".into())
    );
    assert!(
        metrics
            .render()
            .contains(r#"bqforward_bigquery_dataset_missing{plugin_id="bq",dataset="p.logs"} 1"#)
    );
}

#[test]
fn outputs_without_a_buffer_and_filters_are_counted_as_fluentd_names_them() {
    let null = PluginCounters::default();
    null.emitted(10, true, false);
    null.emitted(5, false, false);
    let file = PluginCounters::default();
    file.emitted(3, true, true);
    file.errors(1, true);
    let grep = PluginCounters::default();
    grep.dropped(4);
    let mut fake = Fake::new(status(1000, 0, 0), SinkDetail::default());
    fake.plugins = vec![
        ("drop", "null", false, null),
        ("archive", "file", false, file),
        ("no_debug", "grep", true, grep),
    ];
    let metrics = Metrics::new();
    metrics.set_observer(Arc::new(fake));
    let text = metrics.render();
    for expected in [
        r#"fluentd_output_status_emit_count{plugin_id="drop",type="null"} 2"#,
        r#"fluentd_output_status_emit_records{plugin_id="drop",type="null"} 10"#,
        r#"fluentd_output_status_num_errors{plugin_id="drop",type="null"} 1"#,
        r#"fluentd_output_status_retry_count{plugin_id="drop",type="null"} 1"#,
        r#"fluentd_output_status_write_count{plugin_id="drop",type="null"} 0"#,
        r#"fluentd_output_status_write_count{plugin_id="archive",type="file"} 1"#,
        r#"fluentd_output_status_rollback_count{plugin_id="archive",type="file"} 0"#,
        r#"bqforward_filter_dropped_events_total{plugin_id="no_debug",type="grep"} 4"#,
        r#"bqforward_error_events_total{plugin_id="archive",type="file",routed_to="@ERROR"} 1"#,
        r#"bqforward_error_events_total{plugin_id="archive",type="file",routed_to="dropped"} 0"#,
    ] {
        assert!(text.contains(expected), "{expected} not in\n{text}");
    }
    // Buffer gauges only for outputs with a buffer.
    assert!(!text.contains(r#"fluentd_output_status_buffer_total_bytes{plugin_id="drop""#));
    assert!(!text.contains(r#"bqforward_filter_dropped_events_total{plugin_id="archive""#));
}

#[test]
fn rows_are_counted_per_table_without_partition_decorator_and_per_reason() {
    let detail = SinkDetail::default();
    detail.rows(RowFate::Inserted, "p.d.logs$20261125", "", 5);
    detail.rows(RowFate::Inserted, "p.d.logs$20261126", "", 2);
    detail.rows(RowFate::DeadLettered, "p.d.logs", "invalid", 1);
    detail.request(RequestOutcome::Ok, Duration::from_millis(30));
    let metrics = Metrics::new();
    metrics.set_observer(Arc::new(Fake::new(status(1000, 0, 0), detail)));
    let text = metrics.render();
    assert_eq!(
        line(&text, "bqforward_bigquery_rows_inserted_total{"),
        r#"bqforward_bigquery_rows_inserted_total{plugin_id="bq",table="p.d.logs"} 7"#
    );
    assert_eq!(
        line(&text, "bqforward_bigquery_rows_dead_lettered_total{"),
        r#"bqforward_bigquery_rows_dead_lettered_total{plugin_id="bq",table="p.d.logs",reason="invalid"} 1"#
    );
    assert!(
        text.contains(
            r#"bqforward_bigquery_request_duration_seconds_count{plugin_id="bq",outcome="ok"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn input_handles_count_and_tags_beyond_the_cap_become_other() {
    let metrics = Arc::new(Metrics::new());
    let input = metrics.input("in", "forward");
    input.received(10);
    input.read(100);
    {
        let _open = input.connection();
        assert!(
            metrics
                .render()
                .contains(r#"bqforward_input_connections_open{input="in"} 1"#)
        );
    }
    input.records("app.web").inc_by(4);
    let text = metrics.render();
    assert!(text.contains(r#"bqforward_input_connections_open{input="in"} 0"#));
    assert!(text.contains(r#"bqforward_input_events_total{input="in"} 10"#));
    assert!(text.contains(r#"bqforward_input_bytes_total{input="in"} 100"#));
    assert!(text.contains(r#"fluentd_input_status_num_records_total{hostname="#));
    assert!(text.contains(r#"tag="app.web"} 4"#));
}
