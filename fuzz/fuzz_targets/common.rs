// bqforward's pure modules, compiled into the fuzz targets from source. They use
// `crate::codec` and `crate::config`, so the targets declare modules of those names.
#[allow(dead_code, unused_imports)]
#[path = "../../src/codec/mod.rs"]
pub mod codec;
#[allow(dead_code, unused_imports)]
#[path = "../../src/config/mod.rs"]
pub mod config;
#[allow(dead_code, unused_imports)]
#[path = "../../src/event.rs"]
pub mod event;
