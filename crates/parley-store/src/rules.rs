//! Small decisions every store must make identically, kept in one place so
//! that they cannot drift apart.

/// The message of the `LimitReached` error for a full contact list.
pub(crate) fn contact_limit_message(max: u32) -> String {
    format!("at most {max} contacts")
}

/// How many of a user's other resume tokens may stay when a new one is
/// created: the new token always stays, so `max_per_user` counts as at least 1.
pub(crate) fn other_tokens_kept(max_per_user: u32) -> u32 {
    max_per_user.saturating_sub(1)
}

/// The message of the `LimitReached` error for a full block list.
pub(crate) fn block_limit_message(max: u32) -> String {
    format!("at most {max} blocked accounts")
}
