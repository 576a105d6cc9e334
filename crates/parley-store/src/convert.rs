//! Conversions between the core's unsigned ids and SQLite's signed integers,
//! shared by both stores so that they clamp the same values the same way.

/// The largest integer SQLite stores. Written `u64` values above it are
/// clamped to it, by both stores alike.
pub(crate) const MAX_STORED: u64 = i64::MAX as u64;

/// A value as both stores write it: clamped to [`MAX_STORED`].
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
