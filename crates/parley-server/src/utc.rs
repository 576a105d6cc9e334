//! UTC calendar arithmetic for file names and timestamps (log rotation,
//! perf runs and perf lines), without a date-time dependency: days since
//! the Unix epoch to a civil date and back, in the proleptic Gregorian
//! calendar (the algorithms of Howard Hinnant's `chrono`-compatible date
//! notes).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in a day.
pub const DAY_SECS: u64 = 86_400;

/// A moment in UTC, split into calendar fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub micros: u32,
}

impl Utc {
    /// The calendar fields of `time` (times before 1970 count as 1970).
    pub fn from_system(time: SystemTime) -> Utc {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / DAY_SECS) as i64);
        let rest = secs % DAY_SECS;
        Utc {
            year,
            month,
            day,
            hour: (rest / 3600) as u32,
            minute: (rest / 60 % 60) as u32,
            second: (rest % 60) as u32,
            micros: since.subsec_micros(),
        }
    }

    /// Now.
    pub fn now() -> Utc {
        Utc::from_system(SystemTime::now())
    }

    /// `2026-12-01`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `20261201T213000Z`: sortable, and safe in a file name.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-12-01T21:30:00.123456Z` (RFC 3339, microseconds).
    pub fn rfc3339_micros(&self) -> String {
        format!(
            "{}T{:02}:{:02}:{:02}.{:06}Z",
            self.date(),
            self.hour,
            self.minute,
            self.second,
            self.micros
        )
    }
}

/// Days since 1970-01-01 of `time`.
pub fn day_number(time: SystemTime) -> i64 {
    (time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / DAY_SECS) as i64
}

/// (year, month 1–12, day 1–31) of a day number.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The day number of a `YYYY-MM-DD` date, if it is one.
pub fn parse_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year: i64 = text.get(0..4)?.parse().ok()?;
    let month: u32 = text.get(5..7)?.parse().ok()?;
    let day: u32 = text.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates_round_trip() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (11_016, (2000, 2, 29)),
            (20_424, (2025, 12, 2)),
            (-1, (1969, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date);
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
        }
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn formats() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_711_000_000_042);
        let utc = Utc::from_system(t);
        assert_eq!(utc.date(), "2025-12-02");
        assert_eq!(utc.compact(), "20251202T213000Z");
        assert_eq!(utc.rfc3339_micros(), "2025-12-02T21:30:00.000042Z");
        assert_eq!(parse_date("2025-12-02"), Some(day_number(t)));
        assert_eq!(parse_date("2025-13-02"), None);
        assert_eq!(parse_date("2025-12-2"), None);
    }
}
