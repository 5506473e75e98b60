//! fluentd's config file format: the syntax tree (`syntax`), typed values (`value`) and a
//! per-section reader that reports unknown parameters (`section`). No plugin semantics here.
pub mod section;
pub mod syntax;
pub mod value;

mod embedded;

pub use section::Section;
pub use syntax::{Element, Location, Param, parse_file, parse_str};

/// A config problem, with the file and line it was found at when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub location: Option<Location>,
    pub message: String,
}

impl ConfigError {
    pub fn at(location: &Location, message: impl Into<String>) -> Self {
        Self {
            location: Some(location.clone()),
            message: message.into(),
        }
    }

    pub fn new(message: impl Into<String>) -> Self {
        Self {
            location: None,
            message: message.into(),
        }
    }
}
