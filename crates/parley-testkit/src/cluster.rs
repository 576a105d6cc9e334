//! Several parleyd processes as one service for tests: a scratch
//! PostgreSQL schema of its own ([`crate::postgres::Scratch`]) and a NATS
//! subject prefix of its own on the NATS server at 127.0.0.1:4222. Without
//! either service the test skips, saying so, unless
//! `PARLEY_REQUIRE_SERVICES=1` makes it fail.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::postgres::Scratch;
use crate::{Store, TestServer};

/// The NATS server the tests use.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Whether NATS answers; without it the test fails under
/// `PARLEY_REQUIRE_SERVICES=1` and is skipped (saying so) otherwise.
pub fn nats_available() -> bool {
    if std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
        return true;
    }
    assert!(
        !std::env::var("PARLEY_REQUIRE_SERVICES").is_ok_and(|v| v == "1"),
        "NATS on 127.0.0.1:4222 is required (PARLEY_REQUIRE_SERVICES=1) but not reachable"
    );
    println!("skipped: NATS is not reachable on 127.0.0.1:4222");
    false
}

/// One service's shared parts: the schema and the bus prefix. Nodes
/// started from it form one service.
pub struct Cluster {
    pub scratch: Scratch,
    pub prefix: String,
}

impl Cluster {
    /// A schema and a prefix of their own, or None (the test skips).
    pub fn create() -> Option<Cluster> {
        if !nats_available() || !Store::Postgres.available() {
            return None;
        }
        let scratch = Scratch::create()?;
        let prefix = format!("parley-test-{:016x}", RandomState::new().build_hasher().finish());
        Some(Cluster { scratch, prefix })
    }

    /// The flags that join a node to this service (the bus part; the store
    /// part is [`TestServer::start_on_postgres`]'s). A silent node is taken
    /// as gone after 2 s.
    pub fn bus_flags(&self) -> Vec<String> {
        [
            "--bus",
            NATS_URL,
            "--bus-prefix",
            &self.prefix,
            "--bus-node-timeout-secs",
            "2",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Starts a node of this service with `extra` flags.
    pub fn node(&self, extra: &[&str]) -> TestServer {
        let mut args = self.bus_flags();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TestServer::start_on_postgres(self.scratch.url(), &args)
    }
}
