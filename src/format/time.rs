//! Event times as text, the way fluentd's TimeFormatter writes them: Ruby strftime formats
//! (%N, %3N, %L for sub-seconds), local time by default, `utc` or a fixed `timezone` offset,
//! and ISO 8601 when no format is given. The text of the last second is kept, with the
//! sub-second digits put in per time.

use crate::event::EventTime;
use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use chrono::{DateTime, FixedOffset, Local, Offset, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Local,
    Utc,
    Fixed(FixedOffset),
    /// An IANA zone (`Asia/Tokyo`), with its daylight-saving rules.
    Named(chrono_tz::Tz),
}

impl Zone {
    /// From fluentd's `localtime` / `utc` / `timezone` parameters (later ones win).
    pub fn from_params(utc: bool, timezone: Option<&str>) -> Result<Self, String> {
        if let Some(tz) = timezone {
            return Self::parse(tz);
        }
        Ok(if utc { Zone::Utc } else { Zone::Local })
    }

    /// A zone as fluentd's `Fluent::Timezone` reads one: an offset (`+09:00`, `-0530`), `UTC`,
    /// or an IANA name (`Asia/Tokyo`).
    pub fn parse(tz: &str) -> Result<Self, String> {
        let tz = tz.trim();
        if let Ok(offset) = parse_offset(tz) {
            return Ok(Zone::Fixed(offset));
        }
        tz.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!(
                "unknown timezone '{tz}': use an offset like +09:00, UTC, or a name like Asia/Tokyo"
            )
        })
    }

    /// Seconds east of UTC at `secs` (Unix time) in this zone.
    pub fn offset_at(&self, secs: i64) -> i64 {
        let Some(utc) = DateTime::<Utc>::from_timestamp(secs, 0) else {
            return 0;
        };
        let seconds = match self {
            Zone::Utc => 0,
            Zone::Local => utc.with_timezone(&Local).offset().local_minus_utc(),
            Zone::Fixed(offset) => offset.local_minus_utc(),
            Zone::Named(tz) => utc.with_timezone(tz).offset().fix().local_minus_utc(),
        };
        i64::from(seconds)
    }

    /// fluentd's `calculate_timekey`: the start of the `timekey`-long period holding `secs`,
    /// periods aligned to midnight in this zone (a 1d timekey starts at local midnight).
    pub fn timekey(&self, secs: i64, timekey: i64) -> i64 {
        if timekey <= 0 {
            return secs;
        }
        let offset = self.offset_at(secs);
        secs - (secs + offset).rem_euclid(timekey)
    }
}

/// "+09:00", "-0530", "UTC", "Z".
fn parse_offset(tz: &str) -> Result<FixedOffset, String> {
    if matches!(tz, "UTC" | "Z" | "utc" | "GMT") {
        return FixedOffset::east_opt(0).ok_or_else(|| "bad offset".into());
    }
    let err = || format!("unsupported timezone '{tz}': use an offset like +09:00 or UTC");
    let (sign, rest) = match tz.as_bytes().first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => return Err(err()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let hours: i32 = digits[..2].parse().map_err(|_| err())?;
    let minutes: i32 = digits[2..].parse().map_err(|_| err())?;
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or_else(err)
}

/// A piece of a Ruby strftime format: text for chrono (everything but the sub-second forms,
/// which are the only ones Ruby and chrono write differently), or a sub-second part with its
/// digits (`%N` 9, `%3N` 3, `%L` 3, `%6L` 6; Ruby pads past 9 digits with zeros).
#[derive(Debug, PartialEq)]
enum Token {
    Text(String),
    Fraction(usize),
}

/// Cuts a Ruby format at its sub-second parts. `%%` is a literal percent sign (so `%%N` is the
/// text `%N`, as fluentd's own sub-second check reads it).
fn tokens(ruby: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut text = String::with_capacity(ruby.len());
    let mut chars = ruby.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let width = |default: usize| digits.parse().ok().filter(|w| *w > 0).unwrap_or(default);
        let fraction = match chars.next() {
            Some('N') => width(9),
            Some('L') => width(3),
            Some(other) => {
                text.push('%');
                text.push_str(&digits);
                text.push(other);
                continue;
            }
            None => {
                text.push('%');
                continue;
            }
        };
        out.push(Token::Text(std::mem::take(&mut text)));
        out.push(Token::Fraction(fraction));
    }
    out.push(Token::Text(text));
    out
}

/// Whether chrono reads the sub-seconds for this item itself (`%f`, `%.3f`, `%+`), so the
/// text cannot be formatted once per second.
fn reads_subseconds(item: &Item<'_>) -> bool {
    matches!(
        item,
        Item::Numeric(Numeric::Nanosecond, _)
            | Item::Fixed(
                Fixed::Nanosecond
                    | Fixed::Nanosecond3
                    | Fixed::Nanosecond6
                    | Fixed::Nanosecond9
                    | Fixed::RFC3339
                    | Fixed::Internal(_)
            )
    )
}

const NANOS_PER_SEC: u32 = 1_000_000_000;

/// The first `digits` digits of the nine of `nanos` (truncated, as Ruby), zeros past nine.
#[inline]
fn push_fraction(out: &mut String, nanos: u32, digits: usize) {
    // One more digit than nine, the leading 1 dropped: itoa writes two digits a step.
    let mut buf = itoa::Buffer::new();
    let nine = &buf.format(NANOS_PER_SEC + nanos % NANOS_PER_SEC)[1..];
    out.push_str(&nine[..digits.min(9)]);
    out.extend(std::iter::repeat_n('0', digits.saturating_sub(9)));
}

/// A compiled format. The text around the sub-second parts depends only on the second: it is
/// formatted once per second and the digits are put between its pieces for each time.
#[derive(Debug, Clone)]
pub struct TimeFormatter {
    /// The text between the sub-second parts, as chrono items: one more than `fractions`.
    parts: Vec<Vec<Item<'static>>>,
    /// Digits of each sub-second part.
    fractions: Vec<usize>,
    zone: Zone,
    /// Some item reads the sub-seconds itself: every time is formatted whole.
    per_event: bool,
    /// The second `text` holds the parts of (None: not reusable).
    second: Option<i64>,
    /// The parts, one after another; `ends` are where each but the last ends. Only the
    /// seconds when the time is out of chrono's range (`valid` false).
    text: String,
    ends: Vec<usize>,
    valid: bool,
    /// The last result with sub-second digits, of the second `text` holds (emptied when
    /// `text` changes).
    out: String,
}

impl TimeFormatter {
    /// `format` None means ISO 8601 (fluentd's default when no time_format is set).
    pub fn new(format: Option<&str>, zone: Zone) -> Result<Self, String> {
        let tokens = match format {
            Some(ruby) => tokens(ruby),
            // Ruby's Time#iso8601: "Z" for UTC times, "+hh:mm" otherwise.
            None if zone == Zone::Utc => vec![Token::Text("%Y-%m-%dT%H:%M:%SZ".into())],
            None => vec![Token::Text("%Y-%m-%dT%H:%M:%S%:z".into())],
        };
        let mut parts = Vec::new();
        let mut fractions = Vec::new();
        for token in tokens {
            match token {
                Token::Text(text) => {
                    let items: Vec<Item<'static>> = StrftimeItems::new(&text)
                        .map(|item| item.to_owned())
                        .collect();
                    if items.iter().any(|item| matches!(item, Item::Error)) {
                        return Err(format!("invalid time format '{}'", format.unwrap_or("")));
                    }
                    parts.push(items);
                }
                Token::Fraction(digits) => fractions.push(digits),
            }
        }
        let per_event = parts.iter().flatten().any(reads_subseconds);
        Ok(Self {
            parts,
            fractions,
            zone,
            per_event,
            second: None,
            text: String::new(),
            ends: Vec::new(),
            valid: false,
            out: String::new(),
        })
    }

    /// ISO 8601, fluentd's format when none is given.
    pub fn iso8601(zone: Zone) -> Self {
        let format = if zone == Zone::Utc {
            "%Y-%m-%dT%H:%M:%SZ"
        } else {
            "%Y-%m-%dT%H:%M:%S%:z"
        };
        let items = StrftimeItems::new(format)
            .map(|item| item.to_owned())
            .collect();
        Self {
            parts: vec![items],
            fractions: Vec::new(),
            zone,
            per_event: false,
            second: None,
            text: String::new(),
            ends: Vec::new(),
            valid: false,
            out: String::new(),
        }
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    pub fn format(&mut self, time: EventTime) -> &str {
        let reusable = !self.per_event && time.nanos < NANOS_PER_SEC;
        if !reusable || self.second != Some(time.secs) {
            self.format_parts(time);
            self.second = reusable.then_some(time.secs);
            self.out.clear();
        }
        if self.fractions.is_empty() || !self.valid {
            return &self.text;
        }
        // The usual format, one sub-second part: the text before it stays in `out` for the
        // rest of the second; only the digits and what follows them are written again.
        if let ([digits], [end]) = (&self.fractions[..], &self.ends[..])
            && !self.out.is_empty()
        {
            self.out.truncate(*end);
            push_fraction(&mut self.out, time.nanos, *digits);
            self.out.push_str(&self.text[*end..]);
            return &self.out;
        }
        self.out.clear();
        let mut start = 0;
        for (&end, &digits) in self.ends.iter().zip(&self.fractions) {
            self.out.push_str(&self.text[start..end]);
            push_fraction(&mut self.out, time.nanos, digits);
            start = end;
        }
        self.out.push_str(&self.text[start..]);
        &self.out
    }

    fn format_parts(&mut self, time: EventTime) {
        self.text.clear();
        self.ends.clear();
        let Some(utc) = DateTime::<Utc>::from_timestamp(time.secs, time.nanos) else {
            self.valid = false;
            self.text.push_str(itoa::Buffer::new().format(time.secs));
            return;
        };
        self.valid = true;
        match self.zone {
            Zone::Utc => self.write_parts(&utc),
            Zone::Local => self.write_parts(&utc.with_timezone(&Local)),
            Zone::Fixed(offset) => self.write_parts(&utc.with_timezone(&offset)),
            Zone::Named(tz) => self.write_parts(&utc.with_timezone(&tz)),
        }
    }

    fn write_parts<Tz: TimeZone>(&mut self, t: &DateTime<Tz>)
    where
        Tz::Offset: std::fmt::Display,
    {
        use std::fmt::Write;
        let last = self.parts.len().saturating_sub(1);
        for (i, items) in self.parts.iter().enumerate() {
            let _ = write!(self.text, "{}", t.format_with_items(items.iter()));
            if i < last {
                self.ends.push(self.text.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(format: Option<&str>, zone: Zone, time: EventTime) -> String {
        TimeFormatter::new(format, zone)
            .unwrap()
            .format(time)
            .to_string()
    }

    #[test]
    fn ruby_formats_render_like_fluentd() {
        let t = EventTime::new(1_764_099_221, 123_456_789); // 2025-11-25T19:33:41Z
        assert_eq!(fmt(None, Zone::Utc, t), "2025-11-25T19:33:41Z");
        let tokyo = Zone::from_params(false, Some("+09:00")).unwrap();
        assert_eq!(fmt(None, tokyo, t), "2025-11-26T04:33:41+09:00");
        assert_eq!(
            fmt(Some("%Y-%m-%d %H:%M:%S.%N %z"), Zone::Utc, t),
            "2025-11-25 19:33:41.123456789 +0000"
        );
        assert_eq!(fmt(Some("%H:%M:%S.%L"), Zone::Utc, t), "19:33:41.123");
        assert_eq!(fmt(Some("%s.%3N"), Zone::Utc, t), "1764099221.123");
        assert_eq!(fmt(Some("%Y%m%d"), Zone::Utc, t), "20251125");
    }

    #[test]
    fn the_second_is_kept_and_subsecond_digits_change_per_time() {
        let mut f = TimeFormatter::new(Some("%H:%M:%S.%N"), Zone::Utc).unwrap();
        assert_eq!(f.format(EventTime::new(0, 1)), "00:00:00.000000001");
        assert_eq!(f.format(EventTime::new(0, 2)), "00:00:00.000000002");
        assert_eq!(f.format(EventTime::new(1, 2)), "00:00:01.000000002");
        let mut f = TimeFormatter::new(Some("%H:%M:%S"), Zone::Utc).unwrap();
        assert_eq!(f.format(EventTime::new(0, 1)), "00:00:00");
        assert_eq!(f.format(EventTime::new(1, 1)), "00:00:01");
        // Several sub-second parts, and text after the last one.
        let mut f = TimeFormatter::new(Some("%L|%S.%6N|%3N %%N"), Zone::Utc).unwrap();
        assert_eq!(
            f.format(EventTime::new(61, 987_654_321)),
            "987|01.987654|987 %N"
        );
    }

    #[test]
    fn subsecond_widths_as_ruby() {
        let t = EventTime::new(0, 120_456_789);
        let f = |format| fmt(Some(format), Zone::Utc, t);
        assert_eq!(f("%1N"), "1");
        assert_eq!(f("%2N"), "12");
        assert_eq!(f("%0N"), "120456789");
        assert_eq!(f("%12N"), "120456789000");
        assert_eq!(f("%6L"), "120456");
        // chrono's own sub-second forms are formatted per time, not from the kept second.
        let mut g = TimeFormatter::new(Some("%+"), Zone::Utc).unwrap();
        assert_eq!(g.format(EventTime::new(0, 0)), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            g.format(EventTime::new(0, 500_000_000)),
            "1970-01-01T00:00:00.500+00:00"
        );
        // Out of chrono's range: the seconds, as before.
        assert_eq!(
            fmt(Some("%Y.%N"), Zone::Utc, EventTime::new(i64::MAX, 5)),
            i64::MAX.to_string()
        );
    }

    /// The plain path the kept second replaces: the format translated for chrono as a whole
    /// (%N -> %9f, %3N -> %3f, %L -> %3f) and every time formatted from scratch.
    fn plain(ruby: &str, zone: Zone, time: EventTime) -> String {
        let mut chrono_format = String::new();
        for token in tokens(ruby) {
            match token {
                Token::Text(text) => chrono_format.push_str(&text),
                Token::Fraction(digits) => chrono_format.push_str(&format!("%{digits}f")),
            }
        }
        let utc = DateTime::<Utc>::from_timestamp(time.secs, time.nanos).unwrap();
        match zone {
            Zone::Utc => utc.format(&chrono_format).to_string(),
            Zone::Local => utc.with_timezone(&Local).format(&chrono_format).to_string(),
            Zone::Fixed(offset) => utc
                .with_timezone(&offset)
                .format(&chrono_format)
                .to_string(),
            Zone::Named(tz) => utc.with_timezone(&tz).format(&chrono_format).to_string(),
        }
    }

    proptest::proptest! {
        #[test]
        fn kept_seconds_format_as_the_plain_path(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "%Y", "-", "%m", "%d", "T", "%H:%M:%S", ".", "%N", "%3N", "%6N", "%9N", "%L",
                "%z", "%:z", "%%", "%%N", "Z", " ", "%s", "%j", "%a %b", "%e",
            ]), 0..10),
            offset in -50_400i32..50_400,
            zone_kind in 0usize..4,
            // Times close together, so the second repeats and moves on.
            start in 0i64..4_000_000_000,
            steps in proptest::collection::vec((0i64..3, 0u32..1_000_000_000), 1..12),
        ) {
            let ruby: String = pieces.concat();
            let zone = match zone_kind {
                0 => Zone::Utc,
                1 => Zone::Local,
                2 => Zone::Named(chrono_tz::Tz::Europe__Paris),
                _ => Zone::Fixed(FixedOffset::east_opt(offset).unwrap()),
            };
            let mut formatter = TimeFormatter::new(Some(&ruby), zone).unwrap();
            let mut secs = start;
            for (step, nanos) in steps {
                secs += step;
                let time = EventTime::new(secs, nanos);
                proptest::prop_assert_eq!(formatter.format(time), plain(&ruby, zone, time));
            }
        }
    }

    #[test]
    fn bad_zone_and_format_are_errors() {
        assert!(Zone::from_params(false, Some("Mars/Olympus")).is_err());
        assert!(Zone::from_params(false, Some("+25:00")).is_err());
        assert!(TimeFormatter::new(Some("%Q"), Zone::Utc).is_err());
    }

    #[test]
    fn named_zones_follow_their_daylight_saving_rules() {
        let paris = Zone::parse("Europe/Paris").unwrap();
        // 2025-01-15 12:00Z (CET, +1) and 2025-07-15 12:00Z (CEST, +2).
        assert_eq!(paris.offset_at(1_736_942_400), 3600);
        assert_eq!(paris.offset_at(1_752_580_800), 7200);
        let t = EventTime::new(1_752_580_800, 0);
        assert_eq!(fmt(Some("%H:%M %z"), paris, t), "14:00 +0200");
    }

    #[test]
    fn timekeys_start_at_midnight_of_the_zone() {
        // 2025-11-25T19:33:41Z
        let t = 1_764_099_221;
        assert_eq!(Zone::Utc.timekey(t, 86_400), 1_764_028_800); // 2025-11-25T00:00Z
        assert_eq!(Zone::Utc.timekey(t, 3600), 1_764_097_200); // 19:00Z
        let tokyo = Zone::parse("+09:00").unwrap();
        // 04:33 on the 26th in Tokyo: the day began at 2025-11-25T15:00Z.
        assert_eq!(tokyo.timekey(t, 86_400), 1_764_082_800);
        assert_eq!(
            Zone::parse("Asia/Tokyo").unwrap().timekey(t, 86_400),
            1_764_082_800
        );
        assert_eq!(Zone::Utc.timekey(-1, 60), -60);
    }
}
