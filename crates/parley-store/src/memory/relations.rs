//! Presence subscriptions and blocks in the memory store, mirroring the
//! SQLite tables `presence_subscriptions` and `blocks` (see
//! `sqlite/relations.rs`; the rules both follow are in `crate::rules`).

use std::collections::{BTreeMap, BTreeSet};

use parley_core::UserId;
use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested, Subscription};
use parley_core::store::{AccountSummary, StoreError, StoreResult};

use super::State;
use crate::rules::{block_limit_message, contact_limit_message};

/// Who asked to see whom, and who blocks whom. Every relation is kept in
/// both directions so that each question is a range scan.
#[derive(Debug, Default)]
pub(super) struct Relations {
    /// (watcher, target) → approved.
    subscriptions: BTreeMap<(UserId, UserId), bool>,
    /// (target, watcher) → approved: a target's requests.
    subscribers: BTreeMap<(UserId, UserId), bool>,
    /// (blocker, blocked).
    blocks: BTreeSet<(UserId, UserId)>,
    /// (blocked, blocker), for deleting an account.
    blocked_by: BTreeSet<(UserId, UserId)>,
}

impl Relations {
    /// Whether `blocker` blocks `blocked`.
    pub(super) fn blocks(&self, blocker: UserId, blocked: UserId) -> bool {
        self.blocks.contains(&(blocker, blocked))
    }

    fn subscription(&self, watcher: UserId, target: UserId) -> Subscription {
        match self.subscriptions.get(&(watcher, target)) {
            None => Subscription::None,
            Some(false) => Subscription::Pending,
            Some(true) => Subscription::Approved,
        }
    }

    fn set(&mut self, watcher: UserId, target: UserId, to: Subscription) {
        match to {
            Subscription::None => {
                self.subscriptions.remove(&(watcher, target));
                self.subscribers.remove(&(target, watcher));
            }
            Subscription::Pending | Subscription::Approved => {
                let approved = to == Subscription::Approved;
                self.subscriptions.insert((watcher, target), approved);
                self.subscribers.insert((target, watcher), approved);
            }
        }
    }

    /// Forgets every relation `user` takes part in.
    pub(super) fn forget(&mut self, user: UserId) {
        let watched: Vec<UserId> = range(&self.subscriptions, user).map(|(&(_, t), _)| t).collect();
        for target in watched {
            self.set(user, target, Subscription::None);
        }
        let watchers: Vec<UserId> = range(&self.subscribers, user).map(|(&(_, w), _)| w).collect();
        for watcher in watchers {
            self.set(watcher, user, Subscription::None);
        }
        let blocked: Vec<UserId> = set_range(&self.blocks, user).map(|&(_, b)| b).collect();
        for other in blocked {
            self.blocks.remove(&(user, other));
            self.blocked_by.remove(&(other, user));
        }
        let blockers: Vec<UserId> = set_range(&self.blocked_by, user).map(|&(_, b)| b).collect();
        for other in blockers {
            self.blocks.remove(&(other, user));
            self.blocked_by.remove(&(user, other));
        }
    }

    /// A contact removed from `owner`'s list takes the subscription with it.
    pub(super) fn contact_removed(&mut self, owner: UserId, contact: UserId) {
        self.set(owner, contact, Subscription::None);
    }
}

fn range<V>(map: &BTreeMap<(UserId, UserId), V>, first: UserId) -> impl Iterator<Item = (&(UserId, UserId), &V)> {
    map.range((first, UserId(0))..=(first, UserId(u64::MAX)))
}

fn set_range(set: &BTreeSet<(UserId, UserId)>, first: UserId) -> impl Iterator<Item = &(UserId, UserId)> {
    set.range((first, UserId(0))..=(first, UserId(u64::MAX)))
}

impl State {
    /// The caller (who must exist) and the other account, by key.
    fn pair(&self, user: UserId, key: &str) -> StoreResult<AccountSummary> {
        if !self.accounts.contains_key(&user) {
            return Err(StoreError::NoSuchUser);
        }
        let other = *self.by_key.get(key).ok_or(StoreError::NoSuchUser)?;
        self.summary(other).ok_or(StoreError::NoSuchUser)
    }

    pub(super) fn request_presence(&mut self, user: UserId, key: &str, max: u32) -> StoreResult<PresenceRequested> {
        let target = self.pair(user, key)?;
        let them = target.id;
        if self.relations.blocks(user, them) {
            return Ok(PresenceRequested {
                target,
                subscription: Subscription::None,
                new_request: false,
                blocked_by_requester: true,
            });
        }
        let listed = self.accounts.get(&user).is_some_and(|e| e.contacts.contains(&them));
        if !listed {
            let held = self.accounts.get(&user).map_or(0, |e| e.contacts.len());
            if u64::try_from(held).unwrap_or(u64::MAX) >= u64::from(max) {
                return Err(StoreError::LimitReached(contact_limit_message(max)));
            }
            if let Some(owner) = self.accounts.get_mut(&user) {
                owner.contacts.insert(them);
            }
            if let Some(contact) = self.accounts.get_mut(&them) {
                contact.listed_by.insert(user);
            }
        }
        let before = self.relations.subscription(user, them);
        let after = match before {
            // One always sees oneself.
            _ if user == them => Subscription::Approved,
            Subscription::None => Subscription::Pending,
            kept => kept,
        };
        self.relations.set(user, them, after);
        let new_request =
            before == Subscription::None && after == Subscription::Pending && !self.relations.blocks(them, user);
        Ok(PresenceRequested {
            target,
            subscription: after,
            new_request,
            blocked_by_requester: false,
        })
    }

    pub(super) fn answer_presence(&mut self, user: UserId, key: &str, approve: bool) -> StoreResult<PresenceChange> {
        let requester = self.pair(user, key)?;
        let watcher = requester.id;
        let stored = self.relations.subscription(watcher, user);
        // A blocked account's request is kept from the blocker.
        let before = if stored == Subscription::Pending && self.relations.blocks(user, watcher) {
            Subscription::None
        } else {
            stored
        };
        let after = match (approve, before) {
            (true, Subscription::Pending) => Subscription::Approved,
            (true, kept) => kept,
            (false, _) => Subscription::None,
        };
        // A hidden request stays hidden: only a visible change is written.
        if after != before {
            self.relations.set(watcher, user, after);
        }
        Ok(PresenceChange {
            other: requester,
            before,
            after,
        })
    }

    pub(super) fn cancel_presence(&mut self, user: UserId, key: &str) -> StoreResult<PresenceChange> {
        let target = self.pair(user, key)?;
        let before = self.relations.subscription(user, target.id);
        let after = if user == target.id { before } else { Subscription::None };
        self.relations.set(user, target.id, after);
        Ok(PresenceChange {
            other: target,
            before,
            after,
        })
    }

    pub(super) fn presence_requests(&self, user: UserId, limit: u32) -> Vec<AccountSummary> {
        let mut rows: Vec<AccountSummary> = range(&self.relations.subscribers, user)
            .filter(|&(&(_, watcher), &approved)| !approved && !self.relations.blocks(user, watcher))
            .filter_map(|(&(_, watcher), _)| self.summary(watcher))
            .collect();
        rows.sort_by(|a, b| a.name_key.cmp(&b.name_key));
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows
    }

    pub(super) fn contacts_with_presence(&self, user: UserId) -> Vec<Contact> {
        self.list_contacts(user)
            .into_iter()
            .map(|account| Contact {
                subscription: self.relations.subscription(user, account.id),
                account,
            })
            .collect()
    }

    pub(super) fn block(&mut self, user: UserId, key: &str, max: u32) -> StoreResult<BlockOutcome> {
        let target = self.pair(user, key)?;
        let them = target.id;
        let already = self.relations.blocks(user, them);
        if !already {
            let held = set_range(&self.relations.blocks, user)
                .filter(|&&(_, blocked)| self.summary(blocked).is_some())
                .count();
            if u64::try_from(held).unwrap_or(u64::MAX) >= u64::from(max) {
                return Err(StoreError::LimitReached(block_limit_message(max)));
            }
            self.relations.blocks.insert((user, them));
            self.relations.blocked_by.insert((them, user));
        }
        // No presence either way.
        self.relations.set(user, them, Subscription::None);
        self.relations.set(them, user, Subscription::None);
        Ok(BlockOutcome {
            target,
            added: !already,
        })
    }

    pub(super) fn unblock(&mut self, user: UserId, key: &str) -> bool {
        let Some(&them) = self.by_key.get(key) else {
            return false;
        };
        let removed = self.relations.blocks.remove(&(user, them));
        if removed {
            self.relations.blocked_by.remove(&(them, user));
            // What the blocked account asked meanwhile was never shown: it goes.
            self.relations.set(them, user, Subscription::None);
        }
        removed
    }

    /// Whether `user` refuses the sender outside accounts `sender`, after
    /// setting it: a block whose blocked id is no account.
    pub(super) fn refuse_sender(&mut self, user: UserId, sender: UserId, refuse: Option<bool>) -> StoreResult<bool> {
        if refuse.is_some() && self.summary(user).is_none() {
            return Err(StoreError::NoSuchUser);
        }
        match refuse {
            Some(true) => {
                self.relations.blocks.insert((user, sender));
                self.relations.blocked_by.insert((sender, user));
            }
            Some(false) => {
                self.relations.blocks.remove(&(user, sender));
                self.relations.blocked_by.remove(&(sender, user));
            }
            None => {}
        }
        Ok(self.relations.blocks(user, sender))
    }

    pub(super) fn list_blocked(&self, user: UserId) -> Vec<AccountSummary> {
        let mut rows: Vec<AccountSummary> = set_range(&self.relations.blocks, user)
            .filter_map(|&(_, blocked)| self.summary(blocked))
            .collect();
        rows.sort_by(|a, b| a.name_key.cmp(&b.name_key));
        rows
    }
}
