//! Presence by consent: what the store keeps about who may see whose
//! presence and who blocks whom, as the core and the stores exchange it.
//!
//! A relation is directed. A *watcher* sees a *target*'s presence only
//! once the target approved the watcher's request (RFC 6121 §3's
//! subscription: request, then approve or deny; either side may end it).
//! A block (XEP-0191) ends every subscription between the two accounts,
//! both ways, and keeps the blocked account's messages and requests from
//! the blocker.

use crate::store::AccountSummary;

/// Whether a watcher sees a target's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// No request, or it was denied, cancelled or revoked.
    None,
    /// Asked; the target has not answered.
    Pending,
    /// The target approved: the watcher sees its presence.
    Approved,
}

impl Subscription {
    /// The stable lower-case name used by the HTTP API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::Pending => "pending",
            Subscription::Approved => "approved",
        }
    }
}

/// One entry of a contact list, with the owner's subscription to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    pub account: AccountSummary,
    /// The owner's subscription to this contact's presence.
    pub subscription: Subscription,
}

/// What asking for an account's presence did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRequested {
    /// The account asked.
    pub target: AccountSummary,
    /// The requester's subscription afterwards.
    pub subscription: Subscription,
    /// Whether a request now waits that the target has not been shown
    /// before (so the target's sessions are told). False when the request
    /// was pending or approved already, and when the target blocks the
    /// requester: that request is kept but never shown (XEP-0191).
    pub new_request: bool,
    /// The requester blocks the target: nothing was done.
    pub blocked_by_requester: bool,
}

/// What an answer to a request, or a cancellation, changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    /// The other account: the requester (answers) or the target (cancel).
    pub other: AccountSummary,
    /// The subscription before, as the caller could see it.
    pub before: Subscription,
    /// The subscription afterwards.
    pub after: Subscription,
}

/// What a block did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOutcome {
    /// The account blocked.
    pub target: AccountSummary,
    /// False when it was blocked already.
    pub added: bool,
}
