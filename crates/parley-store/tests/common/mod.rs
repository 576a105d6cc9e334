//! Helpers shared by the store tests: building accounts and messages, and
//! opening each kind of store in a throwaway place.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parley_core::scram::StoredCredentials;
use parley_core::store::{
    Account, Appended, FilterLabel, Held, MailboxQuota, NewAccount, NewHeld, NewMessage, NewResumeToken,
};
use parley_core::{Mechanism, Store};
use parley_store::{MemoryStore, PgOptions, PgStore, PgUrl, SqliteOptions, SqliteStore};
use parley_testkit::postgres::Scratch;
use tempfile::TempDir;

/// A store under test, with whatever must live as long as it (fields drop
/// in order: the store before its database).
pub struct Harness {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The directory holding the database, for SQLite.
    pub dir: Option<TempDir>,
    /// The schema holding the tables, for PostgreSQL.
    pub scratch: Option<Scratch>,
}

impl Harness {
    pub fn memory() -> Harness {
        Harness {
            store: Arc::new(MemoryStore::new()),
            dir: None,
            scratch: None,
        }
    }

    pub fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&db_path(dir.path()), SqliteOptions::default()).expect("open");
        Harness {
            store: Arc::new(store),
            dir: Some(dir),
            scratch: None,
        }
    }

    /// A PostgreSQL store in a scratch schema; `None` (the test skips, after
    /// saying why) when the test database does not answer.
    pub fn postgres() -> Option<Harness> {
        let scratch = Scratch::create()?;
        let store = PgStore::open(pg_options(&scratch)).expect("open");
        Some(Harness {
            store: Arc::new(store),
            dir: None,
            scratch: Some(scratch),
        })
    }

    /// Closes the store, so the SQLite writer is done before the directory
    /// goes away.
    pub async fn finish(self) {
        self.store.close().await.expect("close");
    }
}

/// A small pool on `scratch`, so that tests running side by side stay far
/// below PostgreSQL's connection limit.
pub fn pg_options(scratch: &Scratch) -> PgOptions {
    PgOptions {
        pool_size: 2,
        ..PgOptions::new(PgUrl::parse(scratch.url()).expect("scratch URL"))
    }
}

/// Where tests keep their database: in a subdirectory, so that opening also
/// exercises creating it.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("data").join("parley.db")
}

/// Credentials that differ per name, so that round trips are checked.
pub fn credentials(name: &str) -> StoredCredentials {
    StoredCredentials {
        mechanism: [Mechanism::Sha256, Mechanism::Sha512][name.len() % 2],
        salt: format!("salt-of-{name}-0123456789").into_bytes(),
        iterations: 4096 + name.len() as u32,
        stored_key: vec![name.len() as u8; 32],
        server_key: vec![0xA5; 64],
    }
}

pub fn new_account(name: &str) -> NewAccount {
    NewAccount {
        name: name.to_owned(),
        name_key: name.to_ascii_lowercase(),
        credentials: credentials(name),
        invite: None,
    }
}

/// Creates an account that must not exist yet.
pub async fn register(store: &dyn Store, name: &str) -> Account {
    store.create_account(new_account(name)).await.expect("create account")
}

pub fn message(sender: &Account, to: &str, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        sender: sender.id,
        sender_name: sender.name.clone(),
        recipient_key: to.to_ascii_lowercase(),
        client_msg_id: client_msg_id.to_owned(),
        body: body.to_owned(),
        timestamp_ms: 1_700_000_000_000 + body.len() as u64,
        quota: MailboxQuota::UNLIMITED,
    }
}

/// Sends a message that must be stored.
pub async fn send(store: &dyn Store, sender: &Account, to: &str, client_msg_id: &str, body: &str) -> Appended {
    let appended = store
        .append(message(sender, to, client_msg_id, body))
        .await
        .expect("append");
    assert!(!appended.duplicate, "{client_msg_id} stored as new");
    appended
}

/// An hour in milliseconds: how long test tokens live unless a test says
/// otherwise.
pub const HOUR_MS: u64 = 3_600_000;

/// The current system time in ms, as the stores read it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_millis() as u64
}

/// A distinct token hash per number.
pub fn hash(n: u8) -> [u8; 32] {
    let mut hash = [0x5A; 32];
    hash[0] = n;
    hash
}

pub fn token(user: &Account, n: u8, expires_ms: u64, max_per_user: u32) -> NewResumeToken {
    NewResumeToken {
        user: user.id,
        hash: hash(n),
        expires_ms,
        max_per_user,
    }
}

/// Stores a token that must be accepted.
pub async fn create_token(store: &dyn Store, user: &Account, n: u8, expires_ms: u64, max_per_user: u32) {
    store
        .create_resume_token(token(user, n, expires_ms, max_per_user))
        .await
        .expect("create resume token");
}

/// Which of the tokens numbered `ns` resume at `now`, by number.
pub async fn live_tokens(store: &dyn Store, ns: impl IntoIterator<Item = u8>, now: u64) -> Vec<u8> {
    let mut live = Vec::new();
    for n in ns {
        if store.resume(hash(n), now).await.expect("resume").is_some() {
            live.push(n);
        }
    }
    live
}

/// A spam-folder bound no test reaches unless it means to.
pub const ROOMY_FOLDER: u32 = 100;

/// `message` as the filter holds it, with a score of its own.
pub fn held_message(sender: &Account, to: &str, client_msg_id: &str, body: &str, max_held: u32) -> NewHeld {
    NewHeld {
        message: message(sender, to, client_msg_id, body),
        filter: "spam".to_owned(),
        score: 0.75 + body.len() as f32 / 1024.0,
        max_held,
        send: true,
    }
}

/// Holds a message that must be held as new.
pub async fn hold(store: &dyn Store, sender: &Account, to: &str, client_msg_id: &str, body: &str) -> Held {
    let held = store
        .hold(held_message(sender, to, client_msg_id, body, ROOMY_FOLDER))
        .await
        .expect("hold");
    assert!(!held.duplicate, "{client_msg_id} held as new");
    held
}

/// The ids of `user`'s spam folder, oldest first.
pub async fn held_ids(store: &dyn Store, user: &Account) -> Vec<u64> {
    let held = store.held(user.id, 0, u32::MAX).await.expect("held");
    held.iter().map(|m| m.id).collect()
}

/// A label of `body`; its id is ignored by the stores.
pub fn label(body: &str, spam: bool, score: Option<f32>, marked_ms: u64) -> FilterLabel {
    FilterLabel {
        id: 0,
        body: body.to_owned(),
        spam,
        score,
        marked_ms,
    }
}
