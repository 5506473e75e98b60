//! fluentd's config file format: the syntax tree (`syntax`), typed values (`value`) and a
//! per-section reader that reports unknown parameters (`section`). No plugin semantics here.
pub mod section;
pub mod syntax;
pub mod value;

mod embedded;

pub use section::Section;
pub use syntax::{Element, Location, Param, parse_file, parse_str};

/// A config problem, with the file and line it was found at when there is one. `more`
/// holds further problems found in the same pass (every unknown parameter of a section), so
/// `check` can list them all.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub location: Option<Location>,
    pub message: String,
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    pub fn at(location: &Location, message: impl Into<String>) -> Self {
        Self {
            location: Some(location.clone()),
            message: message.into(),
            more: Vec::new(),
        }
    }

    pub fn new(message: impl Into<String>) -> Self {
        Self {
            location: None,
            message: message.into(),
            more: Vec::new(),
        }
    }

    /// `Err` with every error of `errors` (the first carrying the rest), `Ok` when none: for
    /// a plugin that reads on past a bad sub-section so its own parameters are checked too.
    pub fn gather(errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        let mut errors = errors.into_iter();
        match errors.next() {
            Some(mut first) => {
                first.more.extend(errors);
                Err(first)
            }
            None => Ok(()),
        }
    }

    /// This error and every one riding along, flattened.
    pub fn into_all(self) -> Vec<ConfigError> {
        let mut all = Vec::with_capacity(1 + self.more.len());
        let mut pending = vec![self];
        while let Some(mut error) = pending.pop() {
            pending.extend(std::mem::take(&mut error.more));
            all.push(error);
        }
        all
    }
}

/// Every problem a config has, in file and line order: what `check` prints.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn sorted(errors: Vec<ConfigError>) -> Self {
        let mut all: Vec<ConfigError> =
            errors.into_iter().flat_map(ConfigError::into_all).collect();
        all.sort_by(|a, b| {
            let key = |e: &ConfigError| {
                e.location
                    .as_ref()
                    .map(|l| (l.file.clone(), l.line))
                    .unwrap_or_default()
            };
            key(a).cmp(&key(b))
        });
        Self(all)
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self::sorted(vec![error])
    }
}
