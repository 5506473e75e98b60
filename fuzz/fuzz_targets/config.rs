//! fluentd config text (`fluent.conf`, read from a file) on arbitrary input: the parser and
//! every value parser on every parameter it finds may refuse, never panic. The word `include`
//! is spelt `inclvde` first, so no @include reads the machine's files (parameters such as
//! `include_time_key` are still parsed, under that spelling).
#![no_main]

include!("common.rs");

use config::{Element, parse_str, value};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn values(element: &Element) {
    for param in &element.params {
        let v = param.value.as_str();
        let _ = value::parse_size(v);
        let _ = value::parse_time(v);
        let _ = value::parse_bool(v);
        let _ = value::parse_integer(v);
        let _ = value::parse_float(v);
        let _ = value::parse_array(v);
        let _ = value::parse_hash(v);
    }
    for child in &element.elements {
        values(child);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.replace("include", "inclvde");
    if let Ok(root) = parse_str(&text, Path::new("/nonexistent/fuzz.conf")) {
        values(&root);
    }
});
