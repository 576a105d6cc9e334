//! Conversions between the core's unsigned ids and the databases' signed
//! 64-bit integers (SQLite's INTEGER, PostgreSQL's bigint),
//! shared by every store so that they clamp the same values the same way.

/// The largest integer SQLite and PostgreSQL store. Written `u64` values above it are
/// clamped to it, by every store alike.
pub(crate) const MAX_STORED: u64 = i64::MAX as u64;

/// A value as every store writes it: clamped to [`MAX_STORED`].
pub(crate) fn clamp(value: u64) -> u64 {
    value.min(MAX_STORED)
}

/// A value for a range bound in SQL (`seq > ?`, `seq <= ?`): saturates, which
/// keeps the meaning because nothing stored is above [`MAX_STORED`].
pub(crate) fn saturating_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A value for an equality lookup in SQL (`id = ?`): `None` when it is above
/// [`MAX_STORED`], since no stored row can have it.
pub(crate) fn exact_sql(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

/// A filter's score as every store writes it: NaN, which SQLite cannot
/// store (it binds a NaN as NULL), is written as 0; every other value,
/// the infinities included, as it is.
pub(crate) fn stored_score(score: f32) -> f32 {
    if score.is_nan() { 0.0 } else { score }
}
