//! Event times as text, the way fluentd's TimeFormatter writes them: Ruby strftime formats
//! (%N, %3N, %L for sub-seconds), local time by default, `utc` or a fixed `timezone` offset,
//! and ISO 8601 when no format is given. The last formatted second is cached.

use crate::event::EventTime;
use chrono::format::{Item, StrftimeItems};
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

/// Ruby strftime → chrono strftime: only the sub-second forms differ.
fn translate(ruby: &str) -> String {
    let mut out = String::with_capacity(ruby.len());
    let mut chars = ruby.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match chars.next() {
            Some('N') => out.push_str(&format!("%{}f", digits.parse().unwrap_or(9).min(9))),
            Some('L') => out.push_str("%3f"),
            Some(other) => {
                out.push('%');
                out.push_str(&digits);
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct TimeFormatter {
    items: Option<Vec<Item<'static>>>,
    zone: Zone,
    subsec: bool,
    cache: Option<(i64, String)>,
}

impl TimeFormatter {
    /// `format` None means ISO 8601 (fluentd's default when no time_format is set).
    pub fn new(format: Option<&str>, zone: Zone) -> Result<Self, String> {
        let items = match format {
            Some(ruby) => {
                let chrono_fmt = translate(ruby);
                let items: Vec<Item<'static>> = StrftimeItems::new(&chrono_fmt)
                    .map(|item| item.to_owned())
                    .collect();
                if items.iter().any(|item| matches!(item, Item::Error)) {
                    return Err(format!("invalid time format '{ruby}'"));
                }
                Some(items)
            }
            None => None,
        };
        let subsec = format.is_some_and(|f| f.contains("%L") || f.contains('N'));
        Ok(Self {
            items,
            zone,
            subsec,
            cache: None,
        })
    }

    /// ISO 8601, fluentd's format when none is given.
    pub fn iso8601(zone: Zone) -> Self {
        Self {
            items: None,
            zone,
            subsec: false,
            cache: None,
        }
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    pub fn format(&mut self, time: EventTime) -> &str {
        let cached = !self.subsec && matches!(&self.cache, Some((secs, _)) if *secs == time.secs);
        if !cached {
            let text = self.format_uncached(time);
            self.cache = Some((time.secs, text));
        }
        self.cache
            .as_ref()
            .map(|(_, s)| s.as_str())
            .unwrap_or_default()
    }

    fn format_uncached(&self, time: EventTime) -> String {
        let Some(utc) = DateTime::<Utc>::from_timestamp(time.secs, time.nanos) else {
            return time.secs.to_string();
        };
        match self.zone {
            Zone::Utc => self.render(utc, true),
            Zone::Local => self.render(utc.with_timezone(&Local), false),
            Zone::Fixed(offset) => self.render(utc.with_timezone(&offset), false),
            Zone::Named(tz) => self.render(utc.with_timezone(&tz), false),
        }
    }

    fn render<Tz: TimeZone>(&self, t: DateTime<Tz>, utc: bool) -> String
    where
        Tz::Offset: std::fmt::Display,
    {
        match &self.items {
            Some(items) => t.format_with_items(items.iter()).to_string(),
            // Ruby's Time#iso8601: "Z" for UTC times, "+hh:mm" otherwise.
            None if utc => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            None => t.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
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
    fn cache_is_keyed_by_second_and_skipped_for_subsecond_formats() {
        let mut f = TimeFormatter::new(Some("%H:%M:%S.%N"), Zone::Utc).unwrap();
        assert_eq!(f.format(EventTime::new(0, 1)), "00:00:00.000000001");
        assert_eq!(f.format(EventTime::new(0, 2)), "00:00:00.000000002");
        let mut f = TimeFormatter::new(Some("%H:%M:%S"), Zone::Utc).unwrap();
        assert_eq!(f.format(EventTime::new(0, 1)), "00:00:00");
        assert_eq!(f.format(EventTime::new(1, 1)), "00:00:01");
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
