//! The in-memory store, for tests and `--store memory`: nothing survives the
//! process. It follows exactly the semantics of the crate documentation, so
//! that a test passing against it says something about SQLite too.
//!
//! All state sits behind one [`Mutex`]. Every operation takes the lock, does
//! its work and releases it before returning a ready [`StoreReply`], so
//! operations take effect in call order and the lock is never held across an
//! `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested};
use parley_core::scram::StoredCredentials;
use parley_core::store::{
    Account, AccountSummary, AckRange, Appended, FetchPage, FilterLabel, Held, HeldMessage, MailboxState, NewAccount,
    NewHeld, NewInvite, NewMessage, NewResumeToken, OnStored, StoreResult, StoredHook, StoredMessage, announce_stored,
    body_bytes, message_cost,
};
use parley_core::{MessageId, NamePattern, Seq, Store, StoreError, StoreReply, UserId};

use crate::clock;
use crate::convert::clamp;
use crate::rules::{contact_limit_message, other_tokens_kept};

mod held;
mod relations;

/// The hash of a resume token, as the trait passes it.
type TokenHash = [u8; 32];

/// A [`Store`] that keeps everything in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Everything the store holds; see [`State`].
    state: Mutex<State>,
    /// Told of each stored message, under the state's lock, so in the
    /// order the messages were stored.
    on_stored: StoredHook,
}

/// The store's contents, mirroring the SQLite tables.
#[derive(Debug, Default)]
struct State {
    /// Set by `close`; every later operation answers `Closed`.
    closed: bool,
    /// The highest user id ever handed out, so ids are never reused (as
    /// SQLite's AUTOINCREMENT guarantees).
    last_user_id: u64,
    /// The highest message id ever handed out, for the same reason.
    last_message_id: u64,
    /// Live accounts with their mailboxes.
    accounts: HashMap<UserId, AccountEntry>,
    /// Name key to user id, ordered for listing.
    by_key: BTreeMap<String, UserId>,
    /// Idempotency records by sender, then client message id. Kept apart from
    /// the mailboxes so that a retry is recognised even after the recipient
    /// deleted the message. Ordered maps here and in the mailbox: a hash map
    /// that doubles rehashes every entry at once, under the store's one
    /// lock — a pause of several milliseconds for every writer at 100k
    /// entries — where a B-tree grows a node at a time.
    sent_ids: HashMap<UserId, BTreeMap<String, SentRecord>>,
    /// Resume tokens by hash; each is also listed in its user's entry.
    tokens: HashMap<TokenHash, TokenRecord>,
    /// The highest token sequence number handed out: the insertion order
    /// that breaks ties between tokens expiring at the same time.
    last_token_seq: u64,
    /// Unused invite codes by hash, with when each expires.
    invites: HashMap<[u8; 32], u64>,
    /// Presence subscriptions and blocks.
    relations: relations::Relations,
    /// The highest held-message id ever handed out: spam folders share
    /// one sequence, apart from message ids, and never reuse an id.
    last_held_id: u64,
    /// The filter's labelled data.
    labels: held::Labels,
}

/// One live account and its mailbox.
#[derive(Debug)]
struct AccountEntry {
    /// The account as created.
    account: Account,
    /// Its lookup key, to remove it from `by_key` on deletion.
    name_key: String,
    /// Highest seq ever assigned in this mailbox.
    last_seq: Seq,
    /// Messages not yet acknowledged, kept so `mailbox_state` is O(1).
    unread: u64,
    /// Every message with a seq up to this one is acknowledged (cumulative
    /// acks move it), so acks and unread fetches skip that prefix instead of
    /// walking the whole mailbox each time.
    acked_through: Seq,
    /// The mailbox, by seq.
    messages: BTreeMap<Seq, Slot>,
    /// Bytes of the bodies in `messages`, for the mailbox quota (its
    /// message count is `messages.len()`).
    stored_bytes: u64,
    /// Message id to seq, for deletions by id.
    seq_by_id: BTreeMap<MessageId, Seq>,
    /// The ids of this account's contacts.
    contacts: HashSet<UserId>,
    /// The ids of the accounts that have this one as a contact, so that
    /// deleting it can remove it from their lists (SQLite's index on
    /// `contacts.contact`).
    listed_by: HashSet<UserId>,
    /// The hashes of this account's resume tokens.
    tokens: HashSet<TokenHash>,
    /// Its spam folder: goes with the account.
    held: held::Folder,
}

/// A message in a mailbox. The message itself is shared with the append's
/// result (which live delivery pushes), so storing it costs no copy of its
/// body; its read state lives beside it.
#[derive(Debug)]
struct Slot {
    /// The message as appended (`acked` false).
    message: Arc<StoredMessage>,
    /// Whether the recipient acknowledged it.
    acked: bool,
}

impl Slot {
    /// The message as the trait returns it, with its read state.
    fn to_message(&self) -> StoredMessage {
        StoredMessage {
            acked: self.acked,
            ..StoredMessage::clone(&self.message)
        }
    }
}

/// One stored resume token.
#[derive(Clone, Copy, Debug)]
struct TokenRecord {
    /// Whose token it is.
    user: UserId,
    /// When it stops working, clamped like every written value.
    expires_ms: u64,
    /// Insertion order, for pruning.
    seq: u64,
}

/// What an idempotency key remembers of the message it stored.
#[derive(Clone, Copy, Debug)]
struct SentRecord {
    /// The message's id.
    message_id: MessageId,
    /// Whose mailbox it went to.
    recipient: UserId,
    /// Its seq there.
    seq: Seq,
    /// Its original timestamp.
    timestamp_ms: u64,
}

impl MemoryStore {
    /// An empty, open store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Runs `op` on the state under the lock, unless the store is closed.
    fn run<T>(&self, op: impl FnOnce(&mut State) -> StoreResult<T>) -> StoreReply<T> {
        // A poisoned lock means a panic in the middle of an update, which
        // may have left the state inconsistent: refuse rather than guess.
        let Ok(mut state) = self.state.lock() else {
            return StoreReply::ready(Err(StoreError::Backend("memory store lock poisoned".into())));
        };
        if state.closed {
            return StoreReply::ready(Err(StoreError::Closed));
        }
        StoreReply::ready(op(&mut state))
    }
}

impl State {
    fn create_account(&mut self, new: NewAccount) -> StoreResult<Account> {
        if self.by_key.contains_key(&new.name_key) {
            return Err(StoreError::NameTaken);
        }
        if let Some(invite) = new.invite {
            match self.invites.get(&invite.hash) {
                Some(&expires_ms) if expires_ms > invite.now_ms => {}
                _ => return Err(StoreError::InviteInvalid),
            }
        }
        let id = UserId(next_id(self.last_user_id)?);
        // Nothing below fails: the invite goes with the account or not at all.
        if let Some(invite) = new.invite {
            self.invites.remove(&invite.hash);
        }
        self.last_user_id = id.0;
        let account = Account {
            id,
            name: new.name,
            credentials: new.credentials,
        };
        self.by_key.insert(new.name_key.clone(), id);
        self.accounts.insert(
            id,
            AccountEntry {
                acked_through: Seq(0),
                account: account.clone(),
                name_key: new.name_key,
                last_seq: Seq(0),
                unread: 0,
                messages: BTreeMap::new(),
                stored_bytes: 0,
                seq_by_id: BTreeMap::new(),
                contacts: HashSet::new(),
                listed_by: HashSet::new(),
                tokens: HashSet::new(),
                held: held::Folder::default(),
            },
        );
        Ok(account)
    }

    fn find_account(&self, name_key: &str) -> Option<Account> {
        let id = self.by_key.get(name_key)?;
        self.accounts.get(id).map(|entry| entry.account.clone())
    }

    fn delete_account(&mut self, user: UserId) -> StoreResult<()> {
        // Its mailbox and its spam folder go with its entry.
        let entry = self.accounts.remove(&user).ok_or(StoreError::NoSuchUser)?;
        self.by_key.remove(&entry.name_key);
        self.sent_ids.remove(&user);
        for hash in &entry.tokens {
            self.tokens.remove(hash);
        }
        // A contact of itself is already gone with its entry.
        for owner in &entry.listed_by {
            if let Some(owner) = self.accounts.get_mut(owner) {
                owner.contacts.remove(&user);
            }
        }
        for contact in &entry.contacts {
            if let Some(contact) = self.accounts.get_mut(contact) {
                contact.listed_by.remove(&user);
            }
        }
        self.relations.forget(user);
        Ok(())
    }

    fn list_accounts(&self, pattern: &NamePattern, after: &str, limit: u32) -> Vec<AccountSummary> {
        // Start at whichever is later, `after` or the pattern's literal
        // prefix, and stop once keys no longer start with the prefix: the
        // same range scan the SQLite store does.
        let prefix = pattern.literal_prefix();
        let start = if after >= prefix {
            Bound::Excluded(after)
        } else {
            Bound::Included(prefix)
        };
        self.by_key
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| pattern.matches(key))
            .filter_map(|(key, id)| {
                let entry = self.accounts.get(id)?;
                Some(AccountSummary {
                    id: *id,
                    name: entry.account.name.clone(),
                    name_key: key.clone(),
                })
            })
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
    }

    /// The message the sender's client_msg_id already names, if it was
    /// stored: as it is now, or rebuilt from the record when the recipient
    /// deleted it.
    fn original(&self, new: &NewMessage) -> Option<StoredMessage> {
        let sender = UserId(clamp(new.sender.0));
        let record = self.sent_ids.get(&sender)?.get(&new.client_msg_id)?;
        let original = self
            .accounts
            .get(&record.recipient)
            .and_then(|entry| entry.messages.get(&record.seq))
            .filter(|slot| slot.message.id == record.message_id)
            .map(Slot::to_message)
            .unwrap_or_else(|| StoredMessage {
                id: record.message_id,
                recipient: record.recipient,
                seq: record.seq,
                sender,
                sender_name: new.sender_name.clone(),
                client_msg_id: new.client_msg_id.clone(),
                body: new.body.clone(),
                timestamp_ms: record.timestamp_ms,
                acked: false,
            });
        Some(original)
    }

    fn append(&mut self, new: NewMessage) -> StoreResult<Appended> {
        let sender = UserId(clamp(new.sender.0));
        if let Some(original) = self.original(&new) {
            return Ok(Appended {
                message: Arc::new(original),
                duplicate: true,
            });
        }
        let recipient = *self.by_key.get(&new.recipient_key).ok_or(StoreError::NoSuchUser)?;
        // A blocked sender is answered as if the account did not exist.
        if self.relations.blocks(recipient, sender) {
            return Err(StoreError::NoSuchUser);
        }
        let message_id = MessageId(next_id(self.last_message_id)?);
        let entry = self.accounts.get_mut(&recipient).ok_or(StoreError::NoSuchUser)?;
        let body = body_bytes(&new.body);
        let stored = u64::try_from(entry.messages.len()).unwrap_or(u64::MAX);
        if !new.quota.admits(stored, entry.stored_bytes, body) {
            return Err(StoreError::MailboxFull);
        }
        let seq = Seq(next_id(entry.last_seq.0)?);
        let timestamp_ms = clamp(new.timestamp_ms);
        let message = Arc::new(StoredMessage {
            id: message_id,
            recipient,
            seq,
            sender,
            sender_name: new.sender_name,
            client_msg_id: new.client_msg_id,
            body: new.body,
            timestamp_ms,
            acked: false,
        });
        // Nothing below can fail, so the write is all or nothing.
        self.last_message_id = message_id.0;
        entry.last_seq = seq;
        entry.unread += 1;
        entry.stored_bytes = entry.stored_bytes.saturating_add(body);
        entry.messages.insert(
            seq,
            Slot {
                message: Arc::clone(&message),
                acked: false,
            },
        );
        entry.seq_by_id.insert(message_id, seq);
        self.sent_ids.entry(sender).or_default().insert(
            message.client_msg_id.clone(),
            SentRecord {
                message_id,
                recipient,
                seq,
                timestamp_ms,
            },
        );
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    fn fetch(&self, user: UserId, after: Seq, limit: u32, include_acked: bool) -> Vec<StoredMessage> {
        self.fetch_page(user, after, limit, include_acked, usize::MAX).messages
    }

    fn fetch_page(&self, user: UserId, after: Seq, limit: u32, include_acked: bool, max_bytes: usize) -> FetchPage {
        let Some(entry) = self.accounts.get(&user) else {
            return FetchPage::default();
        };
        // Unread messages all lie past the acknowledged prefix.
        let start = if include_acked {
            after
        } else {
            after.max(entry.acked_through)
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut page = FetchPage::default();
        let mut spent = 0usize;
        let matching = entry
            .messages
            .range((Bound::Excluded(start), Bound::Unbounded))
            .map(|(_, slot)| slot)
            .filter(|slot| include_acked || !slot.acked);
        for slot in matching {
            let cost = message_cost(&slot.message);
            if page.messages.len() >= limit || (!page.messages.is_empty() && spent.saturating_add(cost) > max_bytes) {
                page.more = true;
                break;
            }
            spent = spent.saturating_add(cost);
            page.messages.push(slot.to_message());
        }
        page
    }

    fn ack(&mut self, user: UserId, range: AckRange) -> StoreResult<(u64, MailboxState)> {
        let entry = self.accounts.get_mut(&user).ok_or(StoreError::NoSuchUser)?;
        let mut newly = 0u64;
        if range.up_to > entry.acked_through {
            let prefix = (Bound::Excluded(entry.acked_through), Bound::Included(range.up_to));
            for slot in entry.messages.range_mut(prefix).map(|(_, slot)| slot) {
                if !slot.acked {
                    slot.acked = true;
                    newly += 1;
                }
            }
            // Acks name only messages that exist: a later message with a
            // seq below `up_to` is still unread.
            entry.acked_through = range.up_to.min(entry.last_seq);
        }
        for seq in range.seqs {
            match entry.messages.get_mut(&seq) {
                Some(slot) if !slot.acked => {
                    slot.acked = true;
                    newly += 1;
                }
                _ => {}
            }
        }
        entry.unread = entry.unread.saturating_sub(newly);
        Ok((newly, entry.state()))
    }

    fn delete_messages(&mut self, user: UserId, ids: Vec<MessageId>) -> Vec<MessageId> {
        let Some(entry) = self.accounts.get_mut(&user) else {
            return Vec::new();
        };
        let mut deleted = Vec::new();
        for id in ids {
            // Removing from the index first makes a repeated id a no-op.
            let Some(seq) = entry.seq_by_id.remove(&id) else {
                continue;
            };
            if let Some(slot) = entry.messages.remove(&seq) {
                entry.stored_bytes = entry.stored_bytes.saturating_sub(body_bytes(&slot.message.body));
                if !slot.acked {
                    entry.unread = entry.unread.saturating_sub(1);
                }
                deleted.push(id);
            }
        }
        deleted
    }

    fn mailbox_state(&self, user: UserId) -> StoreResult<MailboxState> {
        self.accounts
            .get(&user)
            .map(AccountEntry::state)
            .ok_or(StoreError::NoSuchUser)
    }

    /// The listing row of a live account.
    fn summary(&self, id: UserId) -> Option<AccountSummary> {
        let entry = self.accounts.get(&id)?;
        Some(AccountSummary {
            id,
            name: entry.account.name.clone(),
            name_key: entry.name_key.clone(),
        })
    }

    fn add_contact(&mut self, user: UserId, contact_key: &str, max: u32) -> StoreResult<AccountSummary> {
        let owner = self.accounts.get(&user).ok_or(StoreError::NoSuchUser)?;
        let contact = *self.by_key.get(contact_key).ok_or(StoreError::NoSuchUser)?;
        let summary = self.summary(contact).ok_or(StoreError::NoSuchUser)?;
        // Adding again is not an error, and is allowed at the limit: it adds nothing.
        if owner.contacts.contains(&contact) {
            return Ok(summary);
        }
        if u64::try_from(owner.contacts.len()).unwrap_or(u64::MAX) >= u64::from(max) {
            return Err(StoreError::LimitReached(contact_limit_message(max)));
        }
        if let Some(owner) = self.accounts.get_mut(&user) {
            owner.contacts.insert(contact);
        }
        if let Some(contact) = self.accounts.get_mut(&contact) {
            contact.listed_by.insert(user);
        }
        Ok(summary)
    }

    fn remove_contact(&mut self, user: UserId, contact_key: &str) -> bool {
        let Some(&contact) = self.by_key.get(contact_key) else {
            return false;
        };
        let removed = self
            .accounts
            .get_mut(&user)
            .is_some_and(|owner| owner.contacts.remove(&contact));
        if removed && let Some(contact) = self.accounts.get_mut(&contact) {
            contact.listed_by.remove(&user);
        }
        if removed {
            self.relations.contact_removed(user, contact);
        }
        removed
    }

    fn list_contacts(&self, user: UserId) -> Vec<AccountSummary> {
        let Some(owner) = self.accounts.get(&user) else {
            return Vec::new();
        };
        let mut contacts: Vec<AccountSummary> = owner.contacts.iter().filter_map(|&id| self.summary(id)).collect();
        contacts.sort_by(|a, b| a.name_key.cmp(&b.name_key));
        contacts
    }

    /// Forgets the token with this hash, if any.
    fn remove_token(&mut self, hash: &TokenHash) {
        if let Some(record) = self.tokens.remove(hash)
            && let Some(entry) = self.accounts.get_mut(&record.user)
        {
            entry.tokens.remove(hash);
        }
    }

    /// Forgets every token of `user`; returns how many there were.
    fn remove_tokens_of(&mut self, user: UserId) -> u64 {
        let hashes: Vec<TokenHash> = self
            .accounts
            .get_mut(&user)
            .map(|entry| entry.tokens.drain().collect())
            .unwrap_or_default();
        for hash in &hashes {
            self.tokens.remove(hash);
        }
        hashes.len() as u64
    }

    fn create_resume_token(&mut self, token: NewResumeToken) -> StoreResult<()> {
        if !self.accounts.contains_key(&token.user) {
            return Err(StoreError::NoSuchUser);
        }
        let seq = next_id(self.last_token_seq)?;
        let now = clock::now_ms();
        // A token with the same hash is replaced, whoever held it.
        self.remove_token(&token.hash);
        // The user's other tokens, expired ones first, then the rest in the
        // order they are dropped to make room: expiring first, then oldest.
        let mut held: Vec<(u64, u64, TokenHash)> = self
            .accounts
            .get(&token.user)
            .map(|entry| {
                entry
                    .tokens
                    .iter()
                    .filter_map(|hash| self.tokens.get(hash).map(|r| (r.expires_ms, r.seq, *hash)))
                    .collect()
            })
            .unwrap_or_default();
        held.sort_unstable();
        let live = held.iter().filter(|(expires_ms, _, _)| *expires_ms > now).count();
        let kept = usize::try_from(other_tokens_kept(token.max_per_user)).unwrap_or(usize::MAX);
        let dropped = (held.len() - live) + live.saturating_sub(kept);
        for (_, _, hash) in held.into_iter().take(dropped) {
            self.remove_token(&hash);
        }
        let record = TokenRecord {
            user: token.user,
            expires_ms: clamp(token.expires_ms),
            seq,
        };
        self.last_token_seq = seq;
        self.tokens.insert(token.hash, record);
        if let Some(entry) = self.accounts.get_mut(&token.user) {
            entry.tokens.insert(token.hash);
        }
        Ok(())
    }

    fn resume(&mut self, hash: TokenHash, now_ms: u64) -> Option<Account> {
        let record = *self.tokens.get(&hash)?;
        if record.expires_ms <= now_ms {
            self.remove_token(&hash);
            return None;
        }
        self.accounts.get(&record.user).map(|entry| entry.account.clone())
    }
}

impl AccountEntry {
    fn state(&self) -> MailboxState {
        MailboxState {
            last_seq: self.last_seq,
            unread: self.unread,
        }
    }
}

/// The id after `last`, within what SQLite could store.
fn next_id(last: u64) -> StoreResult<u64> {
    last.checked_add(1)
        .filter(|&next| next == clamp(next))
        .ok_or_else(|| StoreError::Backend("id space exhausted".into()))
}

impl Store for MemoryStore {
    fn create_account(&self, account: NewAccount) -> StoreReply<Account> {
        self.run(|state| state.create_account(account))
    }

    fn create_invite(&self, invite: NewInvite) -> StoreReply<()> {
        self.run(|state| {
            state.invites.retain(|_, expires_ms| *expires_ms > invite.now_ms);
            state.invites.insert(invite.hash, clamp(invite.expires_ms));
            Ok(())
        })
    }

    fn find_account(&self, name_key: &str) -> StoreReply<Option<Account>> {
        self.run(|state| Ok(state.find_account(name_key)))
    }

    fn delete_account(&self, user: UserId) -> StoreReply<()> {
        self.run(|state| state.delete_account(user))
    }

    fn list_accounts(&self, pattern: &NamePattern, after: &str, limit: u32) -> StoreReply<Vec<AccountSummary>> {
        self.run(|state| Ok(state.list_accounts(pattern, after, limit)))
    }

    fn append(&self, message: NewMessage) -> StoreReply<Appended> {
        self.run(|state| {
            let result = state.append(message);
            announce_stored(self.on_stored.get(), &result);
            result
        })
    }

    fn on_stored(&self, hook: OnStored) {
        self.on_stored.set(hook);
    }

    fn fetch(&self, user: UserId, after: Seq, limit: u32, include_acked: bool) -> StoreReply<Vec<StoredMessage>> {
        self.run(|state| Ok(state.fetch(user, after, limit, include_acked)))
    }

    fn fetch_page(
        &self,
        user: UserId,
        after: Seq,
        limit: u32,
        include_acked: bool,
        max_bytes: usize,
    ) -> StoreReply<FetchPage> {
        self.run(|state| Ok(state.fetch_page(user, after, limit, include_acked, max_bytes)))
    }

    fn ack(&self, user: UserId, range: AckRange) -> StoreReply<(u64, MailboxState)> {
        self.run(|state| state.ack(user, range))
    }

    fn delete_messages(&self, user: UserId, ids: Vec<MessageId>) -> StoreReply<Vec<MessageId>> {
        self.run(|state| Ok(state.delete_messages(user, ids)))
    }

    fn mailbox_state(&self, user: UserId) -> StoreReply<MailboxState> {
        self.run(|state| state.mailbox_state(user))
    }

    fn add_contact(&self, user: UserId, contact_key: &str, max: u32) -> StoreReply<AccountSummary> {
        self.run(|state| state.add_contact(user, contact_key, max))
    }

    fn remove_contact(&self, user: UserId, contact_key: &str) -> StoreReply<bool> {
        self.run(|state| Ok(state.remove_contact(user, contact_key)))
    }

    fn list_contacts(&self, user: UserId) -> StoreReply<Vec<AccountSummary>> {
        self.run(|state| Ok(state.list_contacts(user)))
    }

    fn request_presence(&self, user: UserId, target_key: &str, max_contacts: u32) -> StoreReply<PresenceRequested> {
        self.run(|state| state.request_presence(user, target_key, max_contacts))
    }

    fn answer_presence(&self, user: UserId, requester_key: &str, approve: bool) -> StoreReply<PresenceChange> {
        self.run(|state| state.answer_presence(user, requester_key, approve))
    }

    fn cancel_presence(&self, user: UserId, target_key: &str) -> StoreReply<PresenceChange> {
        self.run(|state| state.cancel_presence(user, target_key))
    }

    fn presence_requests(&self, user: UserId, limit: u32) -> StoreReply<Vec<AccountSummary>> {
        self.run(|state| Ok(state.presence_requests(user, limit)))
    }

    fn contacts_with_presence(&self, user: UserId) -> StoreReply<Vec<Contact>> {
        self.run(|state| Ok(state.contacts_with_presence(user)))
    }

    fn block(&self, user: UserId, target_key: &str, max: u32) -> StoreReply<BlockOutcome> {
        self.run(|state| state.block(user, target_key, max))
    }

    fn unblock(&self, user: UserId, target_key: &str) -> StoreReply<bool> {
        self.run(|state| Ok(state.unblock(user, target_key)))
    }

    fn list_blocked(&self, user: UserId) -> StoreReply<Vec<AccountSummary>> {
        self.run(|state| Ok(state.list_blocked(user)))
    }

    fn refuse_sender(&self, user: UserId, sender: UserId, refuse: Option<bool>) -> StoreReply<bool> {
        self.run(|state| state.refuse_sender(user, sender, refuse))
    }

    fn hold(&self, held: NewHeld) -> StoreReply<Held> {
        self.run(|state| state.hold(held))
    }

    fn held(&self, user: UserId, after: u64, limit: u32) -> StoreReply<Vec<HeldMessage>> {
        self.run(|state| Ok(state.held(user, after, limit)))
    }

    fn drop_held(&self, user: UserId, ids: Vec<u64>) -> StoreReply<Vec<u64>> {
        self.run(|state| Ok(state.drop_held(user, ids)))
    }

    fn add_label(&self, label: FilterLabel) -> StoreReply<u64> {
        self.run(|state| state.add_label(label))
    }

    fn labels(&self, after: u64, limit: u32) -> StoreReply<Vec<FilterLabel>> {
        self.run(|state| Ok(state.labels(after, limit)))
    }

    fn create_resume_token(&self, token: NewResumeToken) -> StoreReply<()> {
        self.run(|state| state.create_resume_token(token))
    }

    fn resume(&self, hash: [u8; 32], now_ms: u64) -> StoreReply<Option<Account>> {
        self.run(|state| Ok(state.resume(hash, now_ms)))
    }

    fn revoke_resume_token(&self, hash: [u8; 32]) -> StoreReply<()> {
        self.run(|state| {
            state.remove_token(&hash);
            Ok(())
        })
    }

    fn revoke_all_resume_tokens(&self, user: UserId) -> StoreReply<u64> {
        self.run(|state| Ok(state.remove_tokens_of(user)))
    }

    fn set_credentials(&self, user: UserId, credentials: StoredCredentials) -> StoreReply<()> {
        self.run(|state| {
            let entry = state.accounts.get_mut(&user).ok_or(StoreError::NoSuchUser)?;
            entry.account.credentials = credentials;
            state.remove_tokens_of(user);
            Ok(())
        })
    }

    fn close(&self) -> StoreReply<()> {
        let Ok(mut state) = self.state.lock() else {
            return StoreReply::ready(Err(StoreError::Backend("memory store lock poisoned".into())));
        };
        // Closing twice is fine: the store has stopped either way.
        state.closed = true;
        StoreReply::ready(Ok(()))
    }
}
