//! Tag routing (first matching `<match>` of several) and table-name template resolution per
//! event, uncached and with the per-(tag, second) cache the BigQuery output uses.

use bqforward::event::EventTime;
use bqforward::fluentd::template::{CachedTemplate, Template};
use bqforward::format::time::Zone;
use bqforward::output::NullOutput;
use bqforward::router::pattern::MatchPatterns;
use bqforward::router::{Label, Route, Router, Target};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

const TAGS: [&str; 6] = [
    "app.web",
    "app.api.v2",
    "kube.var.log.containers.nginx-7d9f_default_nginx-0123abcd.log",
    "web.access",
    "system.auth",
    "unmatched.tag.here",
];

fn routing(c: &mut Criterion) {
    let route = |p: &str| Route {
        patterns: MatchPatterns::parse(p).unwrap(),
        target: Target::Output(Arc::new(NullOutput::new(p.into()))),
    };
    let router = Router::new(vec![Label {
        name: String::new(),
        filters: Vec::new(),
        routes: vec![
            route("fluent.**"),
            route("kube.var.log.containers.**"),
            route("app.** {web,api}.*"),
            route("system.{auth,cron}"),
        ],
    }]);
    // Resolving a tag to its plan (inputs also cache plans per connection).
    c.bench_function("route/6_tags_4_matches", |b| {
        b.iter(|| {
            for tag in TAGS {
                black_box(router.plan(0, black_box(tag)));
            }
        })
    });
}

fn templates(c: &mut Criterion) {
    let template = Template::parse("${tag[1]}_%Y%m%d", Zone::Utc).unwrap();
    let time = EventTime::new(1_795_600_800, 0);
    c.bench_function("table_template/render", |b| {
        b.iter(|| black_box(template.render(black_box("app.web"), time, &[])))
    });
    let mut cached = CachedTemplate::new(template.clone());
    c.bench_function("table_template/cached_same_second", |b| {
        b.iter(|| black_box(cached.render(black_box("app.web"), time, &[]).len()))
    });
}

criterion_group!(benches, routing, templates);
criterion_main!(benches);
