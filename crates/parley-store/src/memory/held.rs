//! The spam folder and the filter's labelled data in the memory store,
//! mirroring the SQLite tables `held_messages` and `filter_labels` (see
//! `sqlite/held.rs`; the rules the stores share are in the crate's
//! documentation).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parley_core::UserId;
use parley_core::store::{FilterLabel, Held, HeldMessage, NewHeld, StoreError, StoreResult};

use super::{State, next_id};
use crate::convert::{clamp, stored_score};

/// One account's spam folder.
#[derive(Debug, Default)]
pub(super) struct Folder {
    /// The held messages by id: ascending ids are oldest first.
    messages: BTreeMap<u64, HeldMessage>,
    /// The id of each held (sender, client_msg_id): the idempotency key
    /// among held messages (SQLite's unique index).
    by_client_id: BTreeMap<(UserId, String), u64>,
}

impl Folder {
    /// Drops the held message `id`; whether it was there.
    fn remove(&mut self, id: u64) -> bool {
        match self.messages.remove(&id) {
            Some(gone) => {
                self.by_client_id.remove(&(gone.sender, gone.client_msg_id));
                true
            }
            None => false,
        }
    }
}

/// The labelled data, tied to no account.
#[derive(Debug, Default)]
pub(super) struct Labels {
    /// The highest label id ever handed out, so ids are never reused.
    last_id: u64,
    /// The labels by id.
    rows: BTreeMap<u64, FilterLabel>,
}

impl State {
    pub(super) fn hold(&mut self, new: NewHeld) -> StoreResult<Held> {
        let NewHeld {
            message,
            filter,
            score,
            max_held,
            send,
        } = new;
        if send && let Some(original) = self.original(&message) {
            return Ok(Held::already_stored(Arc::new(original)));
        }
        let sender = UserId(clamp(message.sender.0));
        let recipient = *self.by_key.get(&message.recipient_key).ok_or(StoreError::NoSuchUser)?;
        let entry = self.accounts.get(&recipient).ok_or(StoreError::NoSuchUser)?;
        // A retry gets the original answer, even after a block (as an append does).
        let key = (sender, message.client_msg_id);
        if let Some(original) = entry
            .held
            .by_client_id
            .get(&key)
            .and_then(|id| entry.held.messages.get(id))
        {
            return Ok(Held {
                id: original.id,
                recipient,
                timestamp_ms: original.timestamp_ms,
                duplicate: true,
                stored: None,
            });
        }
        // A blocked (or refused) sender is answered as if the account did not exist.
        if self.relations.blocks(recipient, sender) {
            return Err(StoreError::NoSuchUser);
        }
        let id = next_id(self.last_held_id)?;
        let entry = self.accounts.get_mut(&recipient).ok_or(StoreError::NoSuchUser)?;
        let timestamp_ms = clamp(message.timestamp_ms);
        // Nothing below can fail, so the write is all or nothing.
        self.last_held_id = id;
        let (sender, client_msg_id) = key;
        entry.held.by_client_id.insert((sender, client_msg_id.clone()), id);
        entry.held.messages.insert(
            id,
            HeldMessage {
                id,
                recipient,
                sender,
                sender_name: message.sender_name,
                client_msg_id,
                body: message.body,
                timestamp_ms,
                filter,
                score: stored_score(score),
            },
        );
        // The oldest go first; with `max_held` 0 the new one goes too.
        let kept = usize::try_from(max_held).unwrap_or(usize::MAX);
        while entry.held.messages.len() > kept {
            let Some((&oldest, _)) = entry.held.messages.first_key_value() else {
                break;
            };
            entry.held.remove(oldest);
        }
        Ok(Held {
            id,
            recipient,
            timestamp_ms,
            duplicate: false,
            stored: None,
        })
    }

    pub(super) fn held(&self, user: UserId, after: u64, limit: u32) -> Vec<HeldMessage> {
        let Some(entry) = self.accounts.get(&user) else {
            return Vec::new();
        };
        entry
            .held
            .messages
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, message)| message.clone())
            .collect()
    }

    pub(super) fn drop_held(&mut self, user: UserId, mut ids: Vec<u64>) -> Vec<u64> {
        let Some(entry) = self.accounts.get_mut(&user) else {
            return Vec::new();
        };
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|&id| entry.held.remove(id));
        ids
    }

    pub(super) fn add_label(&mut self, label: FilterLabel) -> StoreResult<u64> {
        let id = next_id(self.labels.last_id)?;
        self.labels.last_id = id;
        self.labels.rows.insert(
            id,
            FilterLabel {
                id,
                body: label.body,
                spam: label.spam,
                score: label.score.map(stored_score),
                marked_ms: clamp(label.marked_ms),
            },
        );
        Ok(id)
    }

    pub(super) fn labels(&self, after: u64, limit: u32) -> Vec<FilterLabel> {
        self.labels
            .rows
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, label)| label.clone())
            .collect()
    }
}
