//! The SQLite store: one dedicated writer thread owns the connection and
//! commits queued operations in groups.
//!
//! Every operation, reads included, becomes an `Op` sent into one
//! bounded queue at call time, so operations take effect in call order (the
//! ordering contract). The writer blocks for the first queued op, takes up to
//! `max_batch - 1` more that are already waiting, runs them all in one
//! transaction and answers them only after the COMMIT succeeded (the
//! durability contract): one fsync covers the whole group. A full queue is
//! answered at once with `Busy`, which is the store's admission control.
//!
//! Closing drops the queue's only sender: the writer then finishes every
//! queued op, checkpoints the WAL into the database file and closes the
//! connection. Dropping the store without closing it does the same, but
//! nobody waits for it.

mod checkpoint;
mod held;
mod ops;
mod relations;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested};
use parley_core::scram::StoredCredentials;
use parley_core::store::StoreStats;
use parley_core::store::{
    Account, AccountSummary, AckRange, Appended, FetchPage, FilterLabel, Held, HeldMessage, MailboxState, NewAccount,
    NewHeld, NewInvite, NewMessage, NewResumeToken, OnStored, StoreResult, StoredHook, StoredMessage,
};
use parley_core::{MessageId, NamePattern, Seq, Store, StoreReply, UserId};
use tokio::sync::oneshot;

use crate::queue::{OpQueue, Shared};
use ops::Op;

/// Default capacity of the operation queue in front of the writer thread.
/// Beyond it, operations are refused with `Busy` instead of piling up.
pub const DEFAULT_WRITE_QUEUE: usize = 4096;
/// Default largest number of operations committed in one transaction.
pub const DEFAULT_MAX_BATCH: usize = 512;
pub use crate::queue::{
    BATCH_SIZE_BUCKETS, BUSY_RETRY_AFTER_MS, BatchStats, COMMIT_MICROS_BUCKETS, NEW_WORK_QUEUE_QUARTERS,
};

/// How hard SQLite works to make commits durable (`PRAGMA synchronous`; the
/// database always runs in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Every acknowledged write survives a power loss: no operation is
    /// answered before an fsync of the WAL that covers its commit. The
    /// default.
    #[default]
    Full,
    /// Every acknowledged write survives a crash of the process, but the
    /// last commits before a power loss or OS crash may be lost (the
    /// database itself stays consistent).
    Normal,
    /// No fsync at all: fastest, and a power loss may lose acknowledged
    /// writes or corrupt the database. For tests and benchmarks only.
    Off,
}

impl Synchronous {
    /// The name used in configuration and in the pragma: `full`, `normal`
    /// or `off`.
    pub fn name(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
            Synchronous::Off => "off",
        }
    }

    /// Parses a configuration value, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Synchronous> {
        [Synchronous::Full, Synchronous::Normal, Synchronous::Off]
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(name))
    }
}

/// Settings of a [`SqliteStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Durability of acknowledged writes; default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// Operations that may wait for the writer before new ones are refused
    /// with `Busy`; default [`DEFAULT_WRITE_QUEUE`]. Must be at least 1.
    pub queue_capacity: usize,
    /// Most operations committed in one transaction; default
    /// [`DEFAULT_MAX_BATCH`]. Must be at least 1.
    pub max_batch: usize,
    /// Largest the database file may grow, in bytes (SQLite's
    /// `max_page_count`); 0 for no bound but the disk's. Past it, writes
    /// fail as on a full disk ([`StoreError::Unavailable`]) and reads go on.
    pub max_db_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            queue_capacity: DEFAULT_WRITE_QUEUE,
            max_batch: DEFAULT_MAX_BATCH,
            max_db_bytes: 0,
        }
    }
}

/// Why a SQLite store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// An option is out of range.
    #[error("invalid SQLite store option: {0}")]
    InvalidOptions(&'static str),
    /// The database's directory did not exist and could not be created.
    #[error("cannot create directory {}: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// SQLite refused to open, configure or migrate the database.
    #[error("cannot open database {}: {source}", .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer Parley; opening it could damage it.
    #[error(
        "database {} has schema version {found}, but this build of Parley knows only versions up to {supported}; \
         it was written by a newer Parley",
        .path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its `PRAGMA user_version`.
        found: i64,
        /// The newest version this build can migrate to.
        supported: i64,
    },
    /// `PRAGMA user_version` holds a value no Parley ever writes.
    #[error("database {} has an invalid schema version {found}", .path.display())]
    SchemaInvalid {
        /// The database file.
        path: PathBuf,
        /// Its `PRAGMA user_version`.
        found: i64,
    },
    /// The database cannot use write-ahead logging (an in-memory database or
    /// a file system without shared memory), which the durability levels of
    /// [`Synchronous`] assume.
    #[error("database {} cannot use WAL journaling (journal mode is {mode:?})", .path.display())]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite chose instead.
        mode: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the SQLite writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The WAL file of the database `conn` has open (at `path`): SQLite names
/// it after the database's full path.
fn wal_path(conn: &rusqlite::Connection, path: &Path) -> PathBuf {
    let main = conn
        .path()
        .filter(|main| !main.is_empty())
        .map_or_else(|| path.to_owned(), PathBuf::from);
    let mut wal = main.into_os_string();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// A [`Store`] backed by one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    /// The writer thread's queue, its admission rule and what the writer
    /// shares.
    queue: OpQueue<SyncSender<Op>>,
    /// Told of each stored message by the writer, once its batch commits.
    on_stored: StoredHook,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, creating its
    /// directory if missing, migrates its schema to the current version and
    /// starts the writer thread.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreOpenError> {
        if options.queue_capacity == 0 {
            return Err(StoreOpenError::InvalidOptions("queue_capacity must be at least 1"));
        }
        if options.max_batch == 0 {
            return Err(StoreOpenError::InvalidOptions("max_batch must be at least 1"));
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreOpenError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = schema::open(path, options.synchronous)?;
        // At `full`, the writer's commits only write the WAL (`normal`) and
        // its syncer thread fsyncs it before answering (see `writer`).
        let wal = match options.synchronous {
            Synchronous::Full => {
                conn.pragma_update(None, "synchronous", Synchronous::Normal.name())
                    .map_err(|source| StoreOpenError::Sqlite {
                        path: path.to_owned(),
                        source,
                    })?;
                Some(wal_path(&conn, path))
            }
            Synchronous::Normal | Synchronous::Off => None,
        };
        // Checkpoints run on their own thread; the writer's own automatic
        // checkpoint stays only as a backstop (see `checkpoint`).
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            .map_err(|source| StoreOpenError::Sqlite {
                path: path.to_owned(),
                source,
            })?;
        if options.max_db_bytes > 0 {
            let page_size: u64 = conn
                .pragma_query_value(None, "page_size", |row| row.get(0))
                .map_err(|source| StoreOpenError::Sqlite {
                    path: path.to_owned(),
                    source,
                })?;
            let pages = (options.max_db_bytes / page_size.max(1)).max(1);
            // SQLite keeps the bound at least the file's current size.
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(|source| StoreOpenError::Sqlite {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let checkpointer = checkpoint::Checkpointer::start(path, options.synchronous)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(options.queue_capacity);
        let shared = Arc::new(Shared::new("sqlite"));
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            tracing::warn!(path = %path.display(), "the database opened read-only: reads are served, writes are refused");
            shared.set_write_failure(Some("the database is read-only".into()));
        }
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("parley-store-writer".into())
            .spawn(move || writer::run(conn, receiver, options.max_batch, writer_shared, checkpointer, wal))
            .map_err(StoreOpenError::Spawn)?;
        Ok(SqliteStore {
            queue: OpQueue::new(sender, options.queue_capacity, shared),
            on_stored: StoredHook::default(),
        })
    }

    /// The writer's counters so far.
    pub fn batch_stats(&self) -> BatchStats {
        self.queue.batch_stats()
    }

    fn submit_new<T>(&self, make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreReply<T> {
        self.queue.submit_new(make)
    }

    fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreReply<T> {
        self.queue.submit(make)
    }
}

impl Store for SqliteStore {
    fn create_account(&self, account: NewAccount) -> StoreReply<Account> {
        self.submit_new(|reply| Op::CreateAccount { account, reply })
    }

    fn create_invite(&self, invite: NewInvite) -> StoreReply<()> {
        self.submit(|reply| Op::CreateInvite { invite, reply })
    }

    fn find_account(&self, name_key: &str) -> StoreReply<Option<Account>> {
        let name_key = name_key.to_owned();
        self.submit(|reply| Op::FindAccount { name_key, reply })
    }

    fn delete_account(&self, user: UserId) -> StoreReply<()> {
        self.submit(|reply| Op::DeleteAccount { user, reply })
    }

    fn list_accounts(&self, pattern: &NamePattern, after: &str, limit: u32) -> StoreReply<Vec<AccountSummary>> {
        let (pattern, after) = (pattern.clone(), after.to_owned());
        self.submit(|reply| Op::ListAccounts {
            pattern,
            after,
            limit,
            reply,
        })
    }

    fn append(&self, message: NewMessage) -> StoreReply<Appended> {
        let on_stored = self.on_stored.get().cloned();
        self.submit_new(|reply| Op::Append {
            message,
            reply,
            on_stored,
        })
    }

    fn on_stored(&self, hook: OnStored) {
        self.on_stored.set(hook);
    }

    fn check_new_work(&self) -> StoreResult<()> {
        self.queue.new_work_room()
    }

    fn takes_new_work(&self) -> bool {
        self.queue.has_new_work_room()
    }

    fn fetch(&self, user: UserId, after: Seq, limit: u32, include_acked: bool) -> StoreReply<Vec<StoredMessage>> {
        self.submit(|reply| Op::Fetch {
            user,
            after,
            limit,
            include_acked,
            reply,
        })
    }

    fn fetch_page(
        &self,
        user: UserId,
        after: Seq,
        limit: u32,
        include_acked: bool,
        max_bytes: usize,
    ) -> StoreReply<FetchPage> {
        self.submit(|reply| Op::FetchPage {
            user,
            after,
            limit,
            include_acked,
            max_bytes,
            reply,
        })
    }

    fn ack(&self, user: UserId, range: AckRange) -> StoreReply<(u64, MailboxState)> {
        self.submit(|reply| Op::Ack { user, range, reply })
    }

    fn delete_messages(&self, user: UserId, ids: Vec<MessageId>) -> StoreReply<Vec<MessageId>> {
        self.submit(|reply| Op::DeleteMessages { user, ids, reply })
    }

    fn mailbox_state(&self, user: UserId) -> StoreReply<MailboxState> {
        self.submit(|reply| Op::MailboxState { user, reply })
    }

    fn add_contact(&self, user: UserId, contact_key: &str, max: u32) -> StoreReply<AccountSummary> {
        let contact_key = contact_key.to_owned();
        self.submit(|reply| Op::AddContact {
            user,
            contact_key,
            max,
            reply,
        })
    }

    fn remove_contact(&self, user: UserId, contact_key: &str) -> StoreReply<bool> {
        let contact_key = contact_key.to_owned();
        self.submit(|reply| Op::RemoveContact {
            user,
            contact_key,
            reply,
        })
    }

    fn list_contacts(&self, user: UserId) -> StoreReply<Vec<AccountSummary>> {
        self.submit(|reply| Op::ListContacts { user, reply })
    }

    fn request_presence(&self, user: UserId, target_key: &str, max_contacts: u32) -> StoreReply<PresenceRequested> {
        let args = (user, target_key.to_owned(), max_contacts);
        self.submit(|reply| {
            relations::call(args, reply, true, |c, (u, k, m)| {
                relations::request_presence(c, u, &k, m)
            })
        })
    }

    fn answer_presence(&self, user: UserId, requester_key: &str, approve: bool) -> StoreReply<PresenceChange> {
        let args = (user, requester_key.to_owned(), approve);
        self.submit(|reply| {
            relations::call(args, reply, true, |c, (u, k, a)| {
                relations::answer_presence(c, u, &k, a)
            })
        })
    }

    fn cancel_presence(&self, user: UserId, target_key: &str) -> StoreReply<PresenceChange> {
        let args = (user, target_key.to_owned());
        self.submit(|reply| relations::call(args, reply, true, |c, (u, k)| relations::cancel_presence(c, u, &k)))
    }

    fn presence_requests(&self, user: UserId, limit: u32) -> StoreReply<Vec<AccountSummary>> {
        self.submit(|reply| {
            relations::call((user, limit), reply, false, |c, (u, l)| {
                relations::presence_requests(c, u, l)
            })
        })
    }

    fn contacts_with_presence(&self, user: UserId) -> StoreReply<Vec<Contact>> {
        self.submit(|reply| relations::call(user, reply, false, relations::contacts_with_presence))
    }

    fn block(&self, user: UserId, target_key: &str, max: u32) -> StoreReply<BlockOutcome> {
        let args = (user, target_key.to_owned(), max);
        self.submit(|reply| relations::call(args, reply, true, |c, (u, k, m)| relations::block(c, u, &k, m)))
    }

    fn unblock(&self, user: UserId, target_key: &str) -> StoreReply<bool> {
        let args = (user, target_key.to_owned());
        self.submit(|reply| relations::call(args, reply, true, |c, (u, k)| relations::unblock(c, u, &k)))
    }

    fn list_blocked(&self, user: UserId) -> StoreReply<Vec<AccountSummary>> {
        self.submit(|reply| relations::call(user, reply, false, relations::list_blocked))
    }

    fn refuse_sender(&self, user: UserId, sender: UserId, refuse: Option<bool>) -> StoreReply<bool> {
        let args = (user, sender, refuse);
        self.submit(|reply| {
            relations::call(args, reply, refuse.is_some(), |c, (u, s, r)| {
                relations::refuse_sender(c, u, s, r)
            })
        })
    }

    fn hold(&self, held: NewHeld) -> StoreReply<Held> {
        // A send the filter diverted: new work, admitted as an append is.
        self.submit_new(|reply| Op::Hold { held, reply })
    }

    fn held(&self, user: UserId, after: u64, limit: u32) -> StoreReply<Vec<HeldMessage>> {
        self.submit(|reply| Op::Held {
            user,
            after,
            limit,
            reply,
        })
    }

    fn drop_held(&self, user: UserId, ids: Vec<u64>) -> StoreReply<Vec<u64>> {
        self.submit(|reply| Op::DropHeld { user, ids, reply })
    }

    fn add_label(&self, label: FilterLabel) -> StoreReply<u64> {
        self.submit(|reply| Op::AddLabel { label, reply })
    }

    fn labels(&self, after: u64, limit: u32) -> StoreReply<Vec<FilterLabel>> {
        self.submit(|reply| Op::Labels { after, limit, reply })
    }

    fn create_resume_token(&self, token: NewResumeToken) -> StoreReply<()> {
        self.submit(|reply| Op::CreateResumeToken { token, reply })
    }

    fn resume(&self, hash: [u8; 32], now_ms: u64) -> StoreReply<Option<Account>> {
        self.submit(|reply| Op::Resume { hash, now_ms, reply })
    }

    fn revoke_resume_token(&self, hash: [u8; 32]) -> StoreReply<()> {
        self.submit(|reply| Op::RevokeResumeToken { hash, reply })
    }

    fn revoke_all_resume_tokens(&self, user: UserId) -> StoreReply<u64> {
        self.submit(|reply| Op::RevokeAllResumeTokens { user, reply })
    }

    fn set_credentials(&self, user: UserId, credentials: StoredCredentials) -> StoreReply<()> {
        self.submit(|reply| Op::SetCredentials {
            user,
            credentials,
            reply,
        })
    }

    fn close(&self) -> StoreReply<()> {
        self.queue.close()
    }

    fn write_failure(&self) -> Option<String> {
        self.queue.write_failure()
    }

    fn stats(&self) -> Option<StoreStats> {
        Some(self.queue.stats())
    }
}
