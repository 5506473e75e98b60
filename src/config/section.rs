//! A typed reader over one directive that remembers what it read, so `finish` can report the
//! parameters and sections nobody asked for; it decides nothing about what a plugin needs.

use std::cell::RefCell;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use super::syntax::{Element, Location, Param};
use super::{ConfigError, value};

pub struct Section<'a> {
    element: &'a Element,
    used_params: RefCell<HashSet<String>>,
    used_sections: RefCell<HashSet<String>>,
}

impl<'a> Section<'a> {
    pub fn new(element: &'a Element) -> Self {
        Self {
            element,
            used_params: RefCell::default(),
            used_sections: RefCell::default(),
        }
    }

    pub fn element(&self) -> &'a Element {
        self.element
    }

    pub fn location(&self) -> &'a Location {
        &self.element.location
    }

    /// `@type`, or the legacy `type` when `@type` is absent.
    pub fn type_name(&self) -> Option<&'a str> {
        self.str("@type").or_else(|| self.str("type"))
    }

    pub fn id(&self) -> Option<&'a str> {
        self.str("@id")
    }

    pub fn label(&self) -> Option<&'a str> {
        self.str("@label")
    }

    /// `@log_level`, or the legacy `log_level` when `@log_level` is absent.
    pub fn log_level(&self) -> Option<&'a str> {
        self.str("@log_level").or_else(|| self.str("log_level"))
    }

    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.read(key).map(|p| p.value.as_str())
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.str(key).unwrap_or(default).to_string()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.typed(key, value::parse_bool)
    }

    pub fn int<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        self.typed(key, |text| {
            text.trim().parse::<T>().map_err(|_| {
                let kind = std::any::type_name::<T>();
                format!("invalid integer value '{text}' (expected {kind})")
            })
        })
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.typed(key, value::parse_float)
    }

    pub fn size(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.typed(key, value::parse_size)
    }

    pub fn time(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        self.typed(key, value::parse_time)
    }

    pub fn array(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.typed(key, value::parse_array)
    }

    pub fn hash(&self, key: &str) -> Result<Option<Vec<(String, String)>>, ConfigError> {
        self.typed(key, value::parse_hash)
    }

    pub fn one_of(&self, key: &str, allowed: &[&str]) -> Result<Option<&'a str>, ConfigError> {
        let Some(param) = self.read(key) else {
            return Ok(None);
        };
        if allowed.contains(&param.value.as_str()) {
            return Ok(Some(&param.value));
        }
        Err(self.param_error(
            param,
            format!(
                "invalid value '{}'; allowed values: {}",
                param.value,
                allowed.join(", ")
            ),
        ))
    }

    pub fn sections(&self, name: &str) -> Vec<&'a Element> {
        self.used_sections.borrow_mut().insert(name.to_string());
        self.element
            .elements
            .iter()
            .filter(|e| e.name == name)
            .collect()
    }

    /// The one `<name>` sub-section, if any; a second one is an error at its location.
    pub fn section(&self, name: &str) -> Result<Option<&'a Element>, ConfigError> {
        match self.sections(name).as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            [first, second, ..] => Err(ConfigError::at(
                &second.location,
                format!(
                    "only one <{name}> section is allowed in {}; another is at line {}",
                    self.describe(),
                    first.location.line
                ),
            )),
        }
    }

    /// The error for a required parameter that is absent. A parameter in the section that
    /// looks like a misspelling of it is named instead: `tabel` is the problem, not a
    /// missing `table`.
    pub fn missing(&self, key: &str, plugin: &str) -> ConfigError {
        let used = self.used_params.borrow();
        let typo = self
            .element
            .params
            .iter()
            .filter(|p| !used.contains(&p.key))
            .find(|p| similar(&p.key, key));
        match typo {
            Some(param) => ConfigError::at(
                &param.location,
                format!(
                    "unknown parameter '{}' in {} (did you mean '{key}'? {plugin} needs '{key}')",
                    param.key,
                    self.describe()
                ),
            ),
            None => ConfigError::at(self.location(), format!("{plugin} needs '{key}'")),
        }
    }

    /// Ends reading: unread parameters named in `ignored` (accepted by fluentd, not
    /// implemented by bqforward) become warnings; any other unread parameter or sub-section
    /// is an error, with the known name it is closest to. Every unknown one is reported: the
    /// first is the error, the rest ride along in `ConfigError::more`.
    pub fn finish(&self, ignored: &[&str]) -> Result<Vec<String>, ConfigError> {
        let used_params = self.used_params.borrow();
        let used_sections = self.used_sections.borrow();
        let mut warned = HashSet::new();
        let mut warnings = Vec::new();
        let mut errors: Vec<ConfigError> = Vec::new();
        let where_ = self.describe();
        let known: Vec<&str> = used_params
            .iter()
            .map(String::as_str)
            .chain(ignored.iter().copied())
            .collect();
        for param in &self.element.params {
            if used_params.contains(&param.key) {
                continue;
            }
            if !ignored.contains(&param.key.as_str()) {
                let hint = suggestion(&param.key, &known);
                errors.push(ConfigError::at(
                    &param.location,
                    format!("unknown parameter '{}' in {where_}{hint}", param.key),
                ));
                continue;
            }
            if warned.insert(param.key.as_str()) {
                warnings.push(format!(
                    "{}: parameter '{}' in {where_} is accepted for compatibility but ignored by bqforward",
                    param.location, param.key
                ));
            }
        }
        for element in &self.element.elements {
            if used_sections.contains(&element.name) {
                continue;
            }
            if !ignored.contains(&element.name.as_str()) {
                let sections: Vec<&str> = used_sections.iter().map(String::as_str).collect();
                let hint = suggestion(&element.name, &sections);
                errors.push(ConfigError::at(
                    &element.location,
                    format!("unknown section <{}> in {where_}{hint}", element.name),
                ));
                continue;
            }
            warnings.push(format!(
                "{}: section <{}> in {where_} is accepted for compatibility but ignored by bqforward",
                element.location, element.name
            ));
        }
        ConfigError::gather(errors).map(|()| warnings)
    }

    fn read(&self, key: &str) -> Option<&'a Param> {
        self.used_params.borrow_mut().insert(key.to_string());
        self.element.param(key)
    }

    fn typed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.read(key) {
            None => Ok(None),
            Some(param) => parse(&param.value)
                .map(Some)
                .map_err(|message| self.param_error(param, message)),
        }
    }

    fn param_error(&self, param: &Param, message: String) -> ConfigError {
        ConfigError::at(
            &param.location,
            format!(
                "parameter '{}' in {}: {message}",
                param.key,
                self.describe()
            ),
        )
    }

    /// `<match a.**> (@type bigquery)`: the directive and, when known, its plugin type.
    /// Reads `@type` without marking it used, so `finish` still reports it if unread.
    fn describe(&self) -> String {
        let header = self.element.header();
        match self
            .element
            .param("@type")
            .or_else(|| self.element.param("type"))
        {
            Some(t) => format!("{header} (@type {})", t.value),
            None => header,
        }
    }
}

/// Close enough to be a typo: a small edit distance relative to the length, or one a
/// prefix-weighted similarity finds (`projetc` / `project`, `tabel` / `table`).
fn similar(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let distance = strsim::damerau_levenshtein(a, b);
    distance <= 2.min(b.len() / 3).max(1) || strsim::jaro_winkler(a, b) >= 0.92
}

/// ` (did you mean 'x'?)` for the closest known name, or nothing.
fn suggestion(name: &str, known: &[&str]) -> String {
    known
        .iter()
        .filter(|k| !k.starts_with('@') && similar(name, k))
        .min_by(|a, b| {
            let d = |k: &str| strsim::damerau_levenshtein(name, k);
            d(a).cmp(&d(b)).then_with(|| a.cmp(b))
        })
        .map(|k| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use std::path::Path;

    fn first_match(text: &str) -> Element {
        let root = parse_str(text, Path::new("etc/fluent.conf")).unwrap();
        root.elements.into_iter().next().unwrap()
    }

    const OUTPUT: &str = "<match app.**>
  @type bigquery_insert
  @id out_bq
  @log_level warn
  project my-project
  auto_create_table true
  max_retries 3
  fetch_schema_interval 5m
  chunk_limit_size 8m
  ratio 0.5
  fields a, b
  labels {\"team\": \"core\"}
  compression gzip
  <buffer tag>
    @type file
  </buffer>
</match>
";

    #[test]
    fn typed_readers_parse_values() {
        let element = first_match(OUTPUT);
        let s = Section::new(&element);
        assert_eq!(s.type_name(), Some("bigquery_insert"));
        assert_eq!(s.id(), Some("out_bq"));
        assert_eq!(s.log_level(), Some("warn"));
        assert_eq!(s.label(), None);
        assert_eq!(s.str("project"), Some("my-project"));
        assert_eq!(s.string("dataset", "logs"), "logs");
        assert_eq!(s.bool("auto_create_table").unwrap(), Some(true));
        assert_eq!(s.int::<u32>("max_retries").unwrap(), Some(3));
        assert_eq!(
            s.time("fetch_schema_interval").unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(s.size("chunk_limit_size").unwrap(), Some(8 << 20));
        assert_eq!(s.float("ratio").unwrap(), Some(0.5));
        assert_eq!(s.array("fields").unwrap().unwrap(), ["a", "b"]);
        assert_eq!(
            s.hash("labels").unwrap().unwrap(),
            [("team".to_string(), "core".to_string())]
        );
        assert_eq!(
            s.one_of("compression", &["gzip", "none"]).unwrap(),
            Some("gzip")
        );
        assert_eq!(s.bool("absent").unwrap(), None);
        let buffer = s.section("buffer").unwrap().unwrap();
        assert_eq!(buffer.arg, "tag");
        assert!(s.finish(&[]).unwrap().is_empty());
    }

    #[test]
    fn legacy_type_and_log_level_are_read() {
        let element = first_match("<match x>\n  type stdout\n  log_level debug\n</match>\n");
        let s = Section::new(&element);
        assert_eq!(s.type_name(), Some("stdout"));
        assert_eq!(s.log_level(), Some("debug"));
        assert!(s.finish(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_values_report_file_line_key_and_directive() {
        let element = first_match(
            "\n<match x>\n  @type t\n  n 12x\n  d 5 minutes\n  b maybe\n  c zip\n  port 70000\n</match>\n",
        );
        let s = Section::new(&element);
        assert_eq!(
            s.int::<i64>("n").unwrap_err().to_string(),
            "etc/fluent.conf:4: parameter 'n' in <match x> (@type t): invalid integer value '12x' (expected i64)"
        );
        assert_eq!(
            s.time("d").unwrap_err().to_string(),
            "etc/fluent.conf:5: parameter 'd' in <match x> (@type t): invalid time value '5 minutes'"
        );
        assert!(
            s.bool("b")
                .unwrap_err()
                .to_string()
                .starts_with("etc/fluent.conf:6: parameter 'b'")
        );
        let err = s.one_of("c", &["gzip", "none"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "etc/fluent.conf:7: parameter 'c' in <match x> (@type t): invalid value 'zip'; allowed values: gzip, none"
        );
        let err = s.int::<u16>("port").unwrap_err().to_string();
        assert!(
            err.starts_with("etc/fluent.conf:8:") && err.contains("expected u16"),
            "{err}"
        );
    }

    #[test]
    fn second_singular_section_is_an_error_at_its_location() {
        let element =
            first_match("<match x>\n  <buffer>\n  </buffer>\n  <buffer>\n  </buffer>\n</match>\n");
        let s = Section::new(&element);
        let err = s.section("buffer").unwrap_err().to_string();
        assert_eq!(
            err,
            "etc/fluent.conf:4: only one <buffer> section is allowed in <match x>; another is at line 2"
        );
        assert_eq!(s.sections("buffer").len(), 2);
    }

    #[test]
    fn finish_reports_unknown_parameter_with_type() {
        let element =
            first_match("<match app.**>\n  @type bigquery_insert\n  projetc typo\n</match>\n");
        let s = Section::new(&element);
        assert_eq!(s.type_name(), Some("bigquery_insert"));
        assert_eq!(
            s.finish(&[]).unwrap_err().to_string(),
            "etc/fluent.conf:3: unknown parameter 'projetc' in <match app.**> (@type bigquery_insert)"
        );
    }

    #[test]
    fn unknown_names_get_the_closest_known_one_and_all_are_reported() {
        let element = first_match(
            "<match app.**>\n  @type t\n  projetc p\n  flush_intervl 1s\n  zzz 1\n  <bufer>\n  </bufer>\n</match>\n",
        );
        let s = Section::new(&element);
        let _ = (
            s.type_name(),
            s.str("project"),
            s.str("dataset"),
            s.sections("buffer"),
        );
        let err = s.finish(&["flush_interval"]).unwrap_err();
        let all: Vec<String> = std::iter::once(&err)
            .chain(&err.more)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "etc/fluent.conf:3: unknown parameter 'projetc' in <match app.**> (@type t) (did you mean 'project'?)",
                "etc/fluent.conf:4: unknown parameter 'flush_intervl' in <match app.**> (@type t) (did you mean 'flush_interval'?)",
                "etc/fluent.conf:5: unknown parameter 'zzz' in <match app.**> (@type t)",
                "etc/fluent.conf:6: unknown section <bufer> in <match app.**> (@type t) (did you mean 'buffer'?)",
            ]
        );
    }

    #[test]
    fn a_missing_required_parameter_names_its_misspelling() {
        let element = first_match("<match x>\n  @type t\n  tabel logs\n</match>\n");
        let s = Section::new(&element);
        assert_eq!(
            s.missing("table", "bigquery_insert").to_string(),
            "etc/fluent.conf:3: unknown parameter 'tabel' in <match x> (@type t) (did you mean 'table'? bigquery_insert needs 'table')"
        );
        assert_eq!(
            s.missing("dataset", "bigquery_insert").to_string(),
            "etc/fluent.conf:1: bigquery_insert needs 'dataset'"
        );
    }

    #[test]
    fn finish_reports_unread_type_as_unknown() {
        let element = first_match("<match **>\n  @type stdout\n</match>\n");
        let err = Section::new(&element).finish(&[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "etc/fluent.conf:2: unknown parameter '@type' in <match **> (@type stdout)"
        );
    }

    #[test]
    fn finish_turns_ignored_parameters_into_warnings_once() {
        let element = first_match(
            "<match **>\n  @type t\n  ignore_me 1\n  ignore_me 2\n  <secondary>\n  </secondary>\n</match>\n",
        );
        let s = Section::new(&element);
        s.type_name();
        let warnings = s.finish(&["ignore_me", "secondary"]).unwrap();
        assert_eq!(
            warnings,
            [
                "etc/fluent.conf:3: parameter 'ignore_me' in <match **> (@type t) is accepted for compatibility but ignored by bqforward",
                "etc/fluent.conf:5: section <secondary> in <match **> (@type t) is accepted for compatibility but ignored by bqforward",
            ]
        );
    }

    #[test]
    fn finish_reports_unread_section() {
        let element = first_match("<match **>\n  <format>\n  </format>\n</match>\n");
        let s = Section::new(&element);
        assert_eq!(
            s.finish(&[]).unwrap_err().to_string(),
            "etc/fluent.conf:2: unknown section <format> in <match **>"
        );
    }

    #[test]
    fn reading_a_missing_key_does_not_hide_a_present_one() {
        let element = first_match("<match **>\n  a 1\n</match>\n");
        let s = Section::new(&element);
        assert_eq!(s.str("b"), None);
        assert!(s.finish(&[]).is_err());
    }

    #[test]
    fn config_error_display_with_and_without_location() {
        assert_eq!(ConfigError::new("boom").to_string(), "boom");
        let element = first_match("<match **>\n</match>\n");
        assert_eq!(
            ConfigError::at(&element.location, "boom").to_string(),
            "etc/fluent.conf:1: boom"
        );
    }
}
