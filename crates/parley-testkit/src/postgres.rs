//! Scratch PostgreSQL schemas for tests: each test gets a schema of its
//! own in the shared test database, reached through a connection string
//! whose `search_path` names it, and the schema is dropped when the test's
//! [`Scratch`] is. Schemas left by killed test runs are dropped by the next
//! run once they are an hour old.
//!
//! The database is `postgres://postgres@127.0.0.1:5432/test` (trust
//! authentication), or what `PARLEY_TEST_POSTGRES_URL` names. When it does
//! not answer, [`available`] and [`Scratch::create`] say so on stdout and
//! the test skips, unless `PARLEY_REQUIRE_SERVICES=1` (as in CI), which
//! makes them fail instead.
//!
//! The work runs on a thread of its own with its own runtime, so these
//! helpers may be called from synchronous code and from inside any async
//! test alike.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The test database unless `PARLEY_TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The variable that names another test database.
pub const URL_VARIABLE: &str = "PARLEY_TEST_POSTGRES_URL";
/// The prefix of every scratch schema's name.
const PREFIX: &str = "parley_test_";
/// How old a scratch schema must be before another run drops it as left
/// over: longer than any test runs.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);
/// How long connecting may take before the database counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The test database's connection string.
pub fn base_url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether tests must fail rather than skip when a service is missing.
fn required() -> bool {
    std::env::var("PARLEY_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Whether the test database answers. When it does not, prints why the
/// test skips, or panics under `PARLEY_REQUIRE_SERVICES=1`. Checked once
/// per test process.
pub fn available() -> bool {
    static REACHABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let reachable = REACHABLE.get_or_init(|| {
        run_sql(&base_url(), "SELECT 1".to_owned())?;
        drop_leftovers();
        Ok(())
    });
    match reachable {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !required(),
                "PostgreSQL is required (PARLEY_REQUIRE_SERVICES=1) but {} does not answer: {why}",
                base_url()
            );
            println!(
                "skipped: PostgreSQL at {} does not answer ({why}); set PARLEY_REQUIRE_SERVICES=1 to fail instead",
                base_url()
            );
            false
        }
    }
}

/// A schema of one's own in the test database, dropped with this value.
#[derive(Debug)]
pub struct Scratch {
    /// The schema's name.
    schema: String,
    /// A connection string whose `search_path` is the schema.
    url: String,
}

impl Scratch {
    /// Makes a fresh, empty schema; `None` (after saying why) when the test
    /// database does not answer and tests may skip.
    pub fn create() -> Option<Scratch> {
        if !available() {
            return None;
        }
        static MADE: AtomicU64 = AtomicU64::new(0);
        let born = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let noise = RandomState::new().build_hasher().finish() & 0xffff_ffff;
        let schema = format!(
            "{PREFIX}{born}_{}_{}_{noise:08x}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(why) = run_sql(&base_url(), format!("CREATE SCHEMA {schema}")) {
            panic!("creating the scratch schema {schema}: {why}");
        }
        let base = base_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        Some(Scratch { schema, url })
    }

    /// The connection string for the server or store under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection string with another host and port in place of the
    /// test database's (a proxy in front of it); `base_url()` must be a URL.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .expect("the test database's URL has a scheme");
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let user = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{addr}{path}")
    }

    /// The address of the test database's server (its first host).
    pub fn server_addr(&self) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let config: tokio_postgres::Config = self.url.parse().expect("the scratch URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .expect("the test database's address")
    }

    /// Runs SQL (one or more statements) in the schema.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        run_sql(&self.url, sql.to_owned())
    }

    /// The first column of every row `sql` returns, as text.
    pub fn column(&self, sql: &str) -> Result<Vec<String>, String> {
        on_own_runtime(self.url.clone(), sql.to_owned(), |client, sql| async move {
            let rows = client.simple_query(&sql).await.map_err(|e| e.to_string())?;
            Ok(rows
                .into_iter()
                .filter_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect())
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A server that was just killed may still hold locks until
        // PostgreSQL notices its connections are gone: wait for them.
        let sql = format!(
            "SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        );
        if let Err(why) = run_sql(&base_url(), sql) {
            eprintln!("could not drop the scratch schema {}: {why}", self.schema);
        }
    }
}

/// Drops the scratch schemas of earlier runs that are old enough to be
/// left over (their names start with their creation time).
fn drop_leftovers() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let listed = on_own_runtime(base_url(), String::new(), |client, _| async move {
        let rows = client
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname::text, $1)",
                &[&PREFIX],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<_, String>(0).ok())
            .collect::<Vec<_>>())
    });
    let Ok(names) = listed else { return };
    for name in names {
        let born = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if born.is_some_and(|born| now.saturating_sub(born) > LEFTOVER_AGE.as_secs()) {
            let _ = run_sql(
                &base_url(),
                format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {name} CASCADE"),
            );
        }
    }
}

/// Runs `sql` on a fresh connection to `url`.
fn run_sql(url: &str, sql: String) -> Result<(), String> {
    on_own_runtime(url.to_owned(), sql, |client, sql| async move {
        client.batch_execute(&sql).await.map_err(|e| e.to_string())
    })
}

/// Connects to `url` and runs `work` with the connection and `arg`, on a
/// thread with its own runtime.
fn on_own_runtime<T, F, Fut>(url: String, arg: String, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
            config.connect_timeout(CONNECT_TIMEOUT);
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("{e}"))?;
            let driver = tokio::spawn(connection);
            let result = work(client, arg).await;
            // The client was moved into `work` and is gone: the connection ends.
            let _ = driver.await;
            result
        })
    });
    thread
        .join()
        .unwrap_or_else(|_| Err("the helper thread panicked".into()))
}
