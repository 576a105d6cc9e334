//! The PostgreSQL store: one writer task owns the store's side of the
//! database and commits queued operations in groups, so that any number
//! of `parleyd` processes (workers, nodes) can share one database.
//!
//! Every operation, reads included, becomes an `Op` sent into one bounded
//! queue at call time, so operations take effect in call order (the
//! ordering contract). The writer takes the first queued op and every op
//! already waiting (up to `max_batch`), runs them in one transaction on one
//! pooled connection and answers them only after COMMIT returned (the
//! durability contract, with `synchronous_commit = on` set on every
//! connection). Runs of appends are set-based: a few pipelined statements
//! for the whole run (`append.rs`). A full queue is answered at once with
//! `Busy`, with the same admission rule as SQLite: new work may fill only
//! three quarters of it.
//!
//! What other processes may do meanwhile is the database's business: the
//! writer locks the account rows an operation changes (`FOR UPDATE`, in id
//! order), so one recipient's appends from many processes get gap-free,
//! strictly increasing seqs, and the unique index on a message's sender and
//! client id makes a resend through another process find the original.
//!
//! The writer runs on a thread of its own with its own single-threaded
//! runtime, as SQLite's writer has its own thread: the store works the same
//! under any caller (the server, tests on a current-thread runtime, benches)
//! and its batches never wait for the server's tasks to be polled.
//!
//! Connections are plain TCP or a unix socket: this build does not speak TLS
//! to PostgreSQL, so the database belongs on the same host (loopback) or a
//! private network (docs/OPERATING.md).

mod append;
mod held;
mod ops;
mod relations;
mod schema;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested};
use parley_core::scram::StoredCredentials;
use parley_core::store::{
    Account, AccountSummary, AckRange, Appended, FetchPage, FilterLabel, Held, HeldMessage, MailboxState, NewAccount,
    NewHeld, NewInvite, NewMessage, NewResumeToken, OnStored, StoreResult, StoreStats, StoredHook, StoredMessage,
};
use parley_core::{MessageId, NamePattern, Seq, Store, StoreReply, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::{Host, SslMode};

use crate::queue::{BUSY_RETRY_AFTER_MS, OpQueue, OpSender, Refused, Shared};
use crate::sqlite::{DEFAULT_MAX_BATCH, DEFAULT_WRITE_QUEUE};
use ops::{Access, Locks, Op};

/// Default most connections the pool opens. The writer uses one at a time;
/// the others replace a broken one while it is closed, and serve the
/// health probe.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default writers per process (see [`PgOptions::writers`]).
pub const DEFAULT_WRITERS: usize = 4;
/// Most writers per process.
pub const MAX_WRITERS: usize = 64;
/// How long a writer holding nothing but acks waits for more before it
/// commits them (see [`PgOptions::ack_linger`]).
pub const DEFAULT_ACK_LINGER: Duration = Duration::from_millis(5);
/// The longest [`PgOptions::ack_linger`].
pub const MAX_ACK_LINGER: Duration = Duration::from_secs(1);
/// Default time to open a connection (TCP connect and start-up) before the
/// database counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time one batch may take in the database, COMMIT included, before
/// its operations are answered `Unavailable` and its connection is dropped
/// (PostgreSQL then rolls the transaction back, unless COMMIT already got
/// through: a client's retry of a send finds it by its client id).
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the store's tables live: a PostgreSQL connection string, as a
/// `postgres://` URL or `key=value` pairs. Its password never appears in
/// `Debug` or [`PgUrl::redacted`].
#[derive(Clone)]
pub struct PgUrl {
    /// The string as given, to compare settings.
    text: String,
    /// What tokio-postgres parsed from it.
    config: tokio_postgres::Config,
}

/// Why a connection string was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PgUrlError(String);

impl PgUrl {
    /// Parses and checks a connection string. TLS modes that require
    /// encryption are refused: this build connects without TLS.
    pub fn parse(text: &str) -> Result<PgUrl, PgUrlError> {
        let config: tokio_postgres::Config = text
            .parse()
            .map_err(|e| PgUrlError(format!("not a PostgreSQL connection string: {e}")))?;
        if config.get_hosts().is_empty() {
            return Err(PgUrlError(
                "names no host (such as postgres://user@127.0.0.1:5432/parley)".into(),
            ));
        }
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(PgUrlError(
                "asks for TLS (sslmode), which parleyd does not speak to PostgreSQL; \
                 connect over loopback or a unix socket without it"
                    .into(),
            ));
        }
        Ok(PgUrl {
            text: text.to_owned(),
            config,
        })
    }

    /// The connection string without its password: user, hosts, ports and
    /// database, as a URL.
    pub fn redacted(&self) -> String {
        let user = self.config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
        let ports = self.config.get_ports();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let name = match host {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{name}:{port}"),
                    None => name,
                }
            })
            .collect();
        let db = self.config.get_dbname().unwrap_or_default();
        format!("postgres://{user}{}/{db}", hosts.join(","))
    }

    /// Whether every host is this machine: a loopback address, `localhost`
    /// or a unix socket. The connection is not encrypted, so anything else
    /// crosses a network in the clear.
    pub fn is_local(&self) -> bool {
        self.config.get_hosts().iter().all(|host| match host {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        })
    }
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &PgUrl) -> bool {
        self.text == other.text
    }
}

impl Eq for PgUrl {}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
}

/// Settings of a [`PgStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// The database.
    pub url: PgUrl,
    /// Most connections open at once; default [`DEFAULT_POOL_SIZE`]. At least 1.
    pub pool_size: usize,
    /// See [`DEFAULT_CONNECT_TIMEOUT`]. Not zero.
    pub connect_timeout: Duration,
    /// See [`DEFAULT_BATCH_TIMEOUT`]. Not zero.
    pub batch_timeout: Duration,
    /// Operations that may wait for the writer before new ones are refused
    /// with `Busy`; default [`DEFAULT_WRITE_QUEUE`]. At least 1.
    pub queue_capacity: usize,
    /// Most operations committed in one transaction; default
    /// [`DEFAULT_MAX_BATCH`]. At least 1.
    pub max_batch: usize,
    /// Writers, each committing its own batches on its own connection;
    /// default [`DEFAULT_WRITERS`], from 1 to [`MAX_WRITERS`]. Each has a
    /// queue of `queue_capacity`; new work is admitted against the sum. A
    /// task's operations all go to one writer (see `Lanes`).
    pub writers: usize,
    /// How long a writer whose batch holds only acks waits for more
    /// operations before it commits; default [`DEFAULT_ACK_LINGER`], at
    /// most [`MAX_ACK_LINGER`], zero for none. Any other operation ends the
    /// wait at once, so only acks (which nobody's delivery waits for: a
    /// session pushes up to its unacked limit ahead of them) are delayed.
    /// Acks then share commits: a node whose users only receive commits a
    /// few times per linger per writer instead of once per ack.
    pub ack_linger: Duration,
}

impl PgOptions {
    /// The defaults, for the database at `url`.
    pub fn new(url: PgUrl) -> PgOptions {
        PgOptions {
            url,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            queue_capacity: DEFAULT_WRITE_QUEUE,
            max_batch: DEFAULT_MAX_BATCH,
            writers: DEFAULT_WRITERS,
            ack_linger: DEFAULT_ACK_LINGER,
        }
    }
}

/// Why a PostgreSQL store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    /// An option is out of range.
    #[error("invalid PostgreSQL store option: {0}")]
    InvalidOptions(&'static str),
    /// The database did not take a connection.
    #[error("cannot connect to PostgreSQL at {url}: {why}")]
    Connect {
        /// The connection string, without its password.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The connection's `search_path` names no schema that exists, so
    /// there is nowhere to create the tables.
    #[error("PostgreSQL at {url}: no schema of the search_path exists; create one or set search_path in the URL")]
    NoSchema {
        /// The connection string, without its password.
        url: String,
    },
    /// Applying the schema failed.
    #[error("migrating the PostgreSQL schema at {url}: {why}")]
    Migrate {
        /// The connection string, without its password.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The database was migrated by a newer Parley; using it could damage it.
    #[error(
        "PostgreSQL at {url} has schema version {found}, but this build of Parley knows only versions up to \
         {supported}; it was written by a newer Parley"
    )]
    SchemaTooNew {
        /// The connection string, without its password.
        url: String,
        /// The highest version recorded in `parley_schema`.
        found: i32,
        /// The newest version this build can migrate to.
        supported: i32,
    },
    /// The store's thread or its runtime could not be started.
    #[error("cannot start the PostgreSQL store's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A [`Store`] backed by a PostgreSQL database that other `parleyd`
/// processes may share.
#[derive(Debug)]
pub struct PgStore {
    /// The writer task's queue, its admission rule and what the writer
    /// shares.
    queue: OpQueue<Lanes>,
    /// The server secret kept in the database (see [`PgStore::server_secret`]).
    secret: [u8; 32],
    /// Told of each stored message by the writers, once its batch commits.
    on_stored: StoredHook,
}

/// The queues of the store's writers. Every operation a task submits goes
/// to the same writer (chosen by the task's id), so a task's operations
/// take effect in the order it called them, as the ordering contract asks;
/// different tasks' operations run on different writers side by side, and
/// the database's row locks order them as they order other processes'.
/// Task ids are numbered in spawn order and the server spawns one task per
/// connection, so taking the id modulo the writers deals connections out
/// in turn (a hash would leave some writers with twice the connections of
/// others, and their clients with the tail latency of the busiest).
/// Calls from outside any task (a runtime's `block_on`, a plain thread)
/// all go to the first writer.
#[derive(Debug)]
struct Lanes(Vec<mpsc::Sender<Op>>);

impl Lanes {
    /// The writer of the calling task.
    fn lane(&self) -> usize {
        let Some(task) = tokio::task::try_id() else {
            return 0;
        };
        let mut number = TaskNumber(0);
        std::hash::Hash::hash(&task, &mut number);
        let lanes = u64::try_from(self.0.len().max(1)).unwrap_or(1);
        usize::try_from(number.0 % lanes).unwrap_or(0)
    }
}

/// Reads a task id's number: tokio's `Id` hashes as that one integer, and
/// offers no other way to read it.
struct TaskNumber(u64);

impl std::hash::Hasher for TaskNumber {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.wrapping_mul(31).wrapping_add(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl OpSender<Op> for Lanes {
    fn try_push(&self, op: Op) -> Result<(), Refused> {
        match self.0.get(self.lane()) {
            Some(lane) => lane.try_push(op),
            None => Err(Refused::Closed),
        }
    }
}

impl PgStore {
    /// Connects to the database, migrates its schema to the current version
    /// (under an advisory lock, so processes starting together migrate
    /// once) and starts the writer. Blocks until that is done or failed.
    pub fn open(options: PgOptions) -> Result<PgStore, PgOpenError> {
        if options.queue_capacity == 0 {
            return Err(PgOpenError::InvalidOptions("queue_capacity must be at least 1"));
        }
        if options.max_batch == 0 {
            return Err(PgOpenError::InvalidOptions("max_batch must be at least 1"));
        }
        if options.pool_size == 0 {
            return Err(PgOpenError::InvalidOptions("pool_size must be at least 1"));
        }
        if options.writers == 0 {
            return Err(PgOpenError::InvalidOptions("writers must be at least 1"));
        }
        if options.writers > MAX_WRITERS {
            return Err(PgOpenError::InvalidOptions("writers must be at most 64"));
        }
        if options.ack_linger > MAX_ACK_LINGER {
            return Err(PgOpenError::InvalidOptions("ack_linger must be at most one second"));
        }
        if options.connect_timeout.is_zero() || options.batch_timeout.is_zero() {
            return Err(PgOpenError::InvalidOptions("timeouts must not be zero"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("parley-store-pg")
            .build()
            .map_err(PgOpenError::Thread)?;
        let capacity = options.queue_capacity;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..options.writers).map(|_| mpsc::channel(capacity)).unzip();
        let shared = Arc::new(Shared::new("postgres"));
        let writer_shared = Arc::clone(&shared);
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("parley-store-pg".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let opened = writer::start(&options).await;
                    let writer = match opened {
                        Ok((writer, secret)) => {
                            // The caller waits for this; if it went away, the
                            // queue's sender is gone too and the writer ends.
                            let _ = opened_tx.send(Ok(secret));
                            writer
                        }
                        Err(error) => {
                            let _ = opened_tx.send(Err(error));
                            return;
                        }
                    };
                    writer::run(writer, receivers, writer_shared).await;
                });
            })
            .map_err(PgOpenError::Thread)?;
        let secret = opened_rx.recv().map_err(|_| {
            PgOpenError::Thread(std::io::Error::other(
                "the PostgreSQL store's thread ended while opening",
            ))
        })??;
        Ok(PgStore {
            queue: OpQueue::new(Lanes(senders), capacity, shared),
            secret,
            on_stored: StoredHook::default(),
        })
    }

    /// The server secret (the seed of decoy salts for unknown names),
    /// kept in the database so that every process sharing it answers a
    /// login for an unknown name alike. Made at random by the first process
    /// that opened the database.
    pub fn server_secret(&self) -> [u8; 32] {
        self.secret
    }

    fn submit_new<T>(&self, make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreReply<T> {
        self.queue.submit_new(make)
    }

    fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreReply<T> {
        self.queue.submit(make)
    }

    /// Queues a call of `run` on `args` (see [`ops::call`]).
    fn call<A, T>(&self, args: A, access: Access, locks: Locks, run: ops::Run<A, T>) -> StoreReply<T>
    where
        A: Send + Sync + 'static,
        T: Send + 'static,
    {
        self.submit(|reply| ops::call(args, reply, access, locks, run))
    }
}

impl Store for PgStore {
    fn create_account(&self, account: NewAccount) -> StoreReply<Account> {
        self.submit_new(|reply| {
            ops::call(account, reply, Access::Write, Locks::NONE, |db, a| {
                Box::pin(ops::create_account(db, a))
            })
        })
    }

    fn create_invite(&self, invite: NewInvite) -> StoreReply<()> {
        self.call(invite, Access::Write, Locks::NONE, |db, i| {
            Box::pin(ops::create_invite(db, i))
        })
    }

    fn find_account(&self, name_key: &str) -> StoreReply<Option<Account>> {
        self.call(name_key.to_owned(), Access::Read, Locks::NONE, |db, k| {
            Box::pin(ops::find_account(db, k))
        })
    }

    fn delete_account(&self, user: UserId) -> StoreReply<()> {
        self.call(user, Access::Write, Locks::user(user), |db, u| {
            Box::pin(ops::delete_account(db, *u))
        })
    }

    fn list_accounts(&self, pattern: &NamePattern, after: &str, limit: u32) -> StoreReply<Vec<AccountSummary>> {
        let args = (pattern.clone(), after.to_owned(), limit);
        self.call(args, Access::Read, Locks::NONE, |db, (p, a, l)| {
            Box::pin(ops::list_accounts(db, p, a, *l))
        })
    }

    fn append(&self, message: NewMessage) -> StoreReply<Appended> {
        let on_stored = self.on_stored.get().cloned();
        self.submit_new(|reply| Op::append(message, reply, on_stored))
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
        let args = (user, after, limit, include_acked);
        self.call(args, Access::Read, Locks::NONE, |db, &(u, a, l, i)| {
            Box::pin(async move {
                let page = ops::fetch(db, u, a, l, i, usize::MAX).await?;
                Ok(page.messages)
            })
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
        let args = (user, after, limit, include_acked, max_bytes);
        self.call(args, Access::Read, Locks::NONE, |db, &(u, a, l, i, m)| {
            Box::pin(ops::fetch(db, u, a, l, i, m))
        })
    }

    fn ack(&self, user: UserId, range: AckRange) -> StoreReply<(u64, MailboxState)> {
        self.call((user, range), Access::Acknowledge, Locks::marks(user), |db, (u, r)| {
            Box::pin(ops::ack(db, *u, r))
        })
    }

    fn delete_messages(&self, user: UserId, ids: Vec<MessageId>) -> StoreReply<Vec<MessageId>> {
        self.call((user, ids), Access::Write, Locks::mailbox(user), |db, (u, ids)| {
            Box::pin(ops::delete_messages(db, *u, ids))
        })
    }

    fn mailbox_state(&self, user: UserId) -> StoreReply<MailboxState> {
        self.call(user, Access::Read, Locks::NONE, |db, u| {
            Box::pin(ops::mailbox_state(db, *u))
        })
    }

    fn add_contact(&self, user: UserId, contact_key: &str, max: u32) -> StoreReply<AccountSummary> {
        let locks = Locks::both(user, contact_key);
        self.call(
            (user, contact_key.to_owned(), max),
            Access::Write,
            locks,
            |db, (u, k, m)| Box::pin(ops::add_contact(db, *u, k, *m)),
        )
    }

    fn remove_contact(&self, user: UserId, contact_key: &str) -> StoreReply<bool> {
        let locks = Locks::both(user, contact_key);
        self.call((user, contact_key.to_owned()), Access::Write, locks, |db, (u, k)| {
            Box::pin(ops::remove_contact(db, *u, k))
        })
    }

    fn list_contacts(&self, user: UserId) -> StoreReply<Vec<AccountSummary>> {
        self.call(user, Access::Read, Locks::NONE, |db, u| {
            Box::pin(ops::list_contacts(db, *u))
        })
    }

    fn request_presence(&self, user: UserId, target_key: &str, max_contacts: u32) -> StoreReply<PresenceRequested> {
        let locks = Locks::both(user, target_key);
        let args = (user, target_key.to_owned(), max_contacts);
        self.call(args, Access::Write, locks, |db, (u, k, m)| {
            Box::pin(relations::request_presence(db, *u, k, *m))
        })
    }

    fn answer_presence(&self, user: UserId, requester_key: &str, approve: bool) -> StoreReply<PresenceChange> {
        let locks = Locks::both(user, requester_key);
        let args = (user, requester_key.to_owned(), approve);
        self.call(args, Access::Write, locks, |db, (u, k, a)| {
            Box::pin(relations::answer_presence(db, *u, k, *a))
        })
    }

    fn cancel_presence(&self, user: UserId, target_key: &str) -> StoreReply<PresenceChange> {
        let locks = Locks::both(user, target_key);
        self.call((user, target_key.to_owned()), Access::Write, locks, |db, (u, k)| {
            Box::pin(relations::cancel_presence(db, *u, k))
        })
    }

    fn presence_requests(&self, user: UserId, limit: u32) -> StoreReply<Vec<AccountSummary>> {
        self.call((user, limit), Access::Read, Locks::NONE, |db, (u, l)| {
            Box::pin(relations::presence_requests(db, *u, *l))
        })
    }

    fn contacts_with_presence(&self, user: UserId) -> StoreReply<Vec<Contact>> {
        self.call(user, Access::Read, Locks::NONE, |db, u| {
            Box::pin(relations::contacts_with_presence(db, *u))
        })
    }

    fn block(&self, user: UserId, target_key: &str, max: u32) -> StoreReply<BlockOutcome> {
        let locks = Locks::both(user, target_key);
        self.call(
            (user, target_key.to_owned(), max),
            Access::Write,
            locks,
            |db, (u, k, m)| Box::pin(relations::block(db, *u, k, *m)),
        )
    }

    fn unblock(&self, user: UserId, target_key: &str) -> StoreReply<bool> {
        let locks = Locks::both(user, target_key);
        self.call((user, target_key.to_owned()), Access::Write, locks, |db, (u, k)| {
            Box::pin(relations::unblock(db, *u, k))
        })
    }

    fn list_blocked(&self, user: UserId) -> StoreReply<Vec<AccountSummary>> {
        self.call(user, Access::Read, Locks::NONE, |db, u| {
            Box::pin(relations::list_blocked(db, *u))
        })
    }

    fn refuse_sender(&self, user: UserId, sender: UserId, refuse: Option<bool>) -> StoreReply<bool> {
        let (access, locks) = match refuse {
            Some(_) => (Access::Write, Locks::user(user)),
            None => (Access::Read, Locks::NONE),
        };
        self.call((user, sender, refuse), access, locks, |db, &(u, s, r)| {
            Box::pin(relations::refuse_sender(db, u, s, r))
        })
    }

    fn hold(&self, held: NewHeld) -> StoreReply<Held> {
        // A send the filter diverted: new work, admitted as an append is,
        // locking its recipient's account row as an append does.
        let locks = Locks::key(&held.message.recipient_key);
        self.submit_new(|reply| ops::call(held, reply, Access::Write, locks, |db, h| Box::pin(held::hold(db, h))))
    }

    fn held(&self, user: UserId, after: u64, limit: u32) -> StoreReply<Vec<HeldMessage>> {
        self.call((user, after, limit), Access::Read, Locks::NONE, |db, &(u, a, l)| {
            Box::pin(held::held(db, u, a, l))
        })
    }

    fn drop_held(&self, user: UserId, ids: Vec<u64>) -> StoreReply<Vec<u64>> {
        self.call((user, ids), Access::Write, Locks::user(user), |db, (u, ids)| {
            Box::pin(held::drop_held(db, *u, ids))
        })
    }

    fn add_label(&self, label: FilterLabel) -> StoreReply<u64> {
        self.call(label, Access::Write, Locks::NONE, |db, l| {
            Box::pin(held::add_label(db, l))
        })
    }

    fn labels(&self, after: u64, limit: u32) -> StoreReply<Vec<FilterLabel>> {
        self.call((after, limit), Access::Read, Locks::NONE, |db, &(a, l)| {
            Box::pin(held::labels(db, a, l))
        })
    }

    fn create_resume_token(&self, token: NewResumeToken) -> StoreReply<()> {
        let locks = Locks::user(token.user);
        self.call(token, Access::Write, locks, |db, t| {
            Box::pin(ops::create_resume_token(db, t))
        })
    }

    fn resume(&self, hash: [u8; 32], now_ms: u64) -> StoreReply<Option<Account>> {
        // A resume deletes the token it finds expired.
        self.call((hash, now_ms), Access::Write, Locks::NONE, |db, (h, n)| {
            Box::pin(ops::resume(db, h, *n))
        })
    }

    fn revoke_resume_token(&self, hash: [u8; 32]) -> StoreReply<()> {
        self.call(hash, Access::Write, Locks::NONE, |db, h| {
            Box::pin(ops::revoke_resume_token(db, h))
        })
    }

    fn revoke_all_resume_tokens(&self, user: UserId) -> StoreReply<u64> {
        self.call(user, Access::Write, Locks::user(user), |db, u| {
            Box::pin(ops::revoke_all_resume_tokens(db, *u))
        })
    }

    fn set_credentials(&self, user: UserId, credentials: StoredCredentials) -> StoreReply<()> {
        self.call((user, credentials), Access::Write, Locks::user(user), |db, (u, c)| {
            Box::pin(ops::set_credentials(db, *u, c))
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

/// What the unit tests of the store's modules share.
#[cfg(test)]
mod test_support {
    use parley_testkit::postgres::Scratch;
    use tokio::task::JoinHandle;

    use super::PgUrl;

    /// A scratch schema and a plain connection to it, driven on a task; `None`
    /// where the test database is absent (the test then skips).
    pub(super) async fn scratch_client() -> Option<(Scratch, PgUrl, tokio_postgres::Client, JoinHandle<()>)> {
        let scratch = Scratch::create()?;
        let url = PgUrl::parse(scratch.url()).expect("the scratch URL");
        let config: tokio_postgres::Config = scratch.url().parse().expect("the scratch URL");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect");
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Some((scratch, url, client, task))
    }
}

#[cfg(test)]
mod tests {
    use super::TaskNumber;

    /// The writer of a task is its id's number modulo the writers: the
    /// number read through `Hash` is the one tokio shows.
    #[tokio::test]
    async fn a_task_id_reads_as_its_number() {
        let (read, shown) = tokio::spawn(async {
            let id = tokio::task::id();
            let mut number = TaskNumber(0);
            std::hash::Hash::hash(&id, &mut number);
            (number.0, id.to_string())
        })
        .await
        .expect("task");
        assert_eq!(read.to_string(), shown);
    }
}
