//! Filters per event over a 500-event chunk of the load generator's records: the typical
//! aggregator's record_transformer (hostname and tag added) and grep `<exclude>`, each alone and
//! one after the other, as the router runs them.

mod common;

use bqforward::config::parse_str;
use bqforward::event::Event;
use bqforward::filter::{Filter, from_config};
use common::{CHUNK, events, time};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

/// The filters of `conf` (`<filter>` sections), in order.
fn filters(conf: &str) -> Vec<Arc<dyn Filter>> {
    let root = parse_str(conf, Path::new("bench.conf")).unwrap();
    root.elements
        .iter()
        .enumerate()
        .map(|(i, e)| from_config(format!("f{i}"), e).unwrap().0)
        .collect()
}

pub const TRANSFORMER: &str = "<filter app.**>
  @type record_transformer
  <record>
    hostname \"#{Socket.gethostname}\"
    tag ${tag}
  </record>
</filter>
";

pub const GREP: &str = "<filter app.**>
  @type grep
  <exclude>
    key level
    pattern /^debug$/
  </exclude>
</filter>
";

fn run(chain: &[Arc<dyn Filter>], batch: Vec<Event>) -> Vec<Event> {
    let mut errors = Vec::new();
    let mut events = batch;
    for f in chain {
        events = f.filter("app.bench", events, &mut errors);
    }
    events
}

fn bench(c: &mut Criterion) {
    let batch = events(0, 0, CHUNK, time());
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(CHUNK as u64));
    for (name, conf) in [
        ("record_transformer", TRANSFORMER.to_owned()),
        ("grep_exclude", GREP.to_owned()),
        ("transformer_then_grep", format!("{TRANSFORMER}{GREP}")),
    ] {
        let chain = filters(&conf);
        group.bench_function(name, |b| {
            b.iter_batched(
                || batch.clone(),
                |events| black_box(run(&chain, events)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
