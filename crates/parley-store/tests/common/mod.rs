//! Helpers shared by the store tests: building accounts and messages, and
//! opening each kind of store in a throwaway place.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parley_core::scram::StoredCredentials;
use parley_core::store::{Account, Appended, NewAccount, NewMessage};
use parley_core::{Mechanism, Store};
use parley_store::{MemoryStore, SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// A store under test, with whatever must live as long as it.
pub struct Harness {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The directory holding the database, for SQLite.
    pub dir: Option<TempDir>,
}

impl Harness {
    pub fn memory() -> Harness {
        Harness {
            store: Arc::new(MemoryStore::new()),
            dir: None,
        }
    }

    pub fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&db_path(dir.path()), SqliteOptions::default()).expect("open");
        Harness {
            store: Arc::new(store),
            dir: Some(dir),
        }
    }

    /// Closes the store, so the SQLite writer is done before the directory
    /// goes away.
    pub async fn finish(self) {
        self.store.close().await.expect("close");
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
