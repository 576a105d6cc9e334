//! UTC dates and times for file names and timestamps (log rotation, perf
//! runs and perf lines). The calendar is the `time` crate's; this module
//! only fixes the few text forms Parley writes and reads, and counts days
//! since the Unix epoch (the unit log rotation works in).

use std::time::{SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime};

/// Seconds in a day.
pub const DAY_SECS: u64 = 86_400;

/// The Julian day number of 1970-01-01, so day numbers count from the
/// Unix epoch.
const EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// A moment in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc(OffsetDateTime);

impl Utc {
    /// The moment `time` (times before 1970 count as 1970-01-01T00:00:00Z:
    /// a clock that far wrong names files as if it were the epoch).
    pub fn from_system(time: SystemTime) -> Utc {
        let time = time.max(UNIX_EPOCH);
        Utc(OffsetDateTime::from(time))
    }

    /// Now.
    pub fn now() -> Utc {
        Utc::from_system(SystemTime::now())
    }

    /// `2026-12-01`.
    pub fn date(&self) -> String {
        date_text(self.0.date())
    }

    /// `20261201T213000Z`: sortable, and safe in a file name.
    pub fn compact(&self) -> String {
        let (date, time) = (self.0.date(), self.0.time());
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            date.year(),
            u8::from(date.month()),
            date.day(),
            time.hour(),
            time.minute(),
            time.second()
        )
    }

    /// `2026-12-01T21:30:00.123456Z` (RFC 3339, microseconds).
    pub fn rfc3339_micros(&self) -> String {
        let time = self.0.time();
        format!(
            "{}T{:02}:{:02}:{:02}.{:06}Z",
            self.date(),
            time.hour(),
            time.minute(),
            time.second(),
            time.microsecond()
        )
    }
}

/// Days since 1970-01-01 of `time` (0 for times before it).
pub fn day_number(time: SystemTime) -> i64 {
    (time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / DAY_SECS) as i64
}

/// `YYYY-MM-DD` of a day number; days outside the calendar's range (about
/// ±9999 years) are written as its first or last day.
pub fn day_text(day: i64) -> String {
    let julian = day.saturating_add(EPOCH_JULIAN_DAY);
    let date = i32::try_from(julian)
        .ok()
        .and_then(|julian| Date::from_julian_day(julian).ok())
        .unwrap_or(if julian < 0 { Date::MIN } else { Date::MAX });
    date_text(date)
}

/// The day number of a calendar date, if it is a real one.
pub fn day_of(year: i32, month: u8, day: u8) -> Option<i64> {
    let month = Month::try_from(month).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(i64::from(date.to_julian_day()) - EPOCH_JULIAN_DAY)
}

/// The day number of a `YYYY-MM-DD` date, if it is a real one (so
/// `2025-02-29` is not).
pub fn parse_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !text
            .bytes()
            .enumerate()
            .all(|(at, b)| at == 4 || at == 7 || b.is_ascii_digit())
    {
        return None;
    }
    let year: i32 = text.get(0..4)?.parse().ok()?;
    let month: u8 = text.get(5..7)?.parse().ok()?;
    let day: u8 = text.get(8..10)?.parse().ok()?;
    day_of(year, month, day)
}

fn date_text(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn day_numbers_and_dates_agree() {
        for (day, text) in [
            (0, "1970-01-01"),
            (11_016, "2000-02-29"),
            (20_424, "2025-12-02"),
            (-1, "1969-12-31"),
        ] {
            assert_eq!(day_text(day), text);
            assert_eq!(parse_date(text), Some(day));
        }
        for day in (-700_000..700_000).step_by(997) {
            assert_eq!(parse_date(&day_text(day)), Some(day), "day {day}");
        }
    }

    #[test]
    fn formats_are_exact_at_calendar_edges() {
        let at = |micros: u64| Utc::from_system(UNIX_EPOCH + Duration::from_micros(micros));
        let t = at(1_764_711_000_000_042);
        assert_eq!(t.date(), "2025-12-02");
        assert_eq!(t.compact(), "20251202T213000Z");
        assert_eq!(t.rfc3339_micros(), "2025-12-02T21:30:00.000042Z");
        // The last microsecond of a leap year's last day.
        let end = at((day_of(2025, 1, 1).unwrap() as u64) * DAY_SECS * 1_000_000 - 1);
        assert_eq!(end.rfc3339_micros(), "2024-12-31T23:59:59.999999Z");
        assert_eq!(at(0).compact(), "19700101T000000Z");
        // Before the epoch counts as the epoch.
        let before = Utc::from_system(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(before.rfc3339_micros(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(day_number(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(day_text(i64::MAX), "9999-12-31");
        assert_eq!(day_text(i64::MIN), "-9999-01-01");
    }

    #[test]
    fn only_real_dates_parse() {
        assert_eq!(parse_date("2024-02-29"), day_of(2024, 2, 29));
        assert!(parse_date("2024-02-29").is_some());
        for text in [
            "2025-02-29",
            "2100-02-29",
            "2025-13-02",
            "2025-00-10",
            "2025-04-31",
            "2025-12-00",
            "2025-12-2",
            "2025/12/02",
            "+025-12-02",
            "2025-1-002",
            "",
        ] {
            assert_eq!(parse_date(text), None, "{text:?}");
        }
        assert_eq!(parse_date("2000-02-29"), Some(11_016));
    }
}
