//! The store's write path: appends per second through the SQLite writer
//! thread with group commit, one at a time and with many in flight, and the
//! memory store for comparison.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use parley_core::UserId;
use parley_core::scram::{Mechanism, StoredCredentials};
use parley_core::store::{MailboxQuota, NewAccount, NewMessage, Store};
use parley_store::memory::MemoryStore;
use parley_store::sqlite::{SqliteOptions, SqliteStore, Synchronous};

fn account(name: &str) -> NewAccount {
    NewAccount {
        name: name.into(),
        name_key: name.into(),
        credentials: StoredCredentials::derive(Mechanism::Sha256, "pw", &[7; 16], 4096),
        invite: None,
    }
}

fn message(sender: UserId, n: u64) -> NewMessage {
    NewMessage {
        sender,
        sender_name: "alice".into(),
        recipient_key: "bob".into(),
        client_msg_id: format!("m-{n}"),
        body: "x".repeat(100),
        timestamp_ms: n,
        quota: MailboxQuota::UNLIMITED,
    }
}

/// Creates alice and bob; returns alice's id.
fn setup(rt: &tokio::runtime::Runtime, store: &dyn Store) -> UserId {
    rt.block_on(async {
        let alice = store.create_account(account("alice")).await.unwrap();
        store.create_account(account("bob")).await.unwrap();
        alice.id
    })
}

fn write_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("store_append");
    group.sample_size(20);
    let dir = tempfile::tempdir().unwrap();
    for (label, sync) in [
        ("sqlite_full", Synchronous::Full),
        ("sqlite_normal", Synchronous::Normal),
    ] {
        let path = dir.path().join(format!("{label}.db"));
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                &path,
                SqliteOptions {
                    synchronous: sync,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let alice = setup(&rt, store.as_ref());
        let mut n = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{label}_one_at_a_time"), |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(store.append(message(alice, n))).unwrap();
            })
        });
        // 256 appends in flight share commits: the group-commit case.
        group.throughput(Throughput::Elements(256));
        group.bench_function(format!("{label}_256_in_flight"), |b| {
            b.iter_batched(
                || {
                    n += 256;
                    (n - 256..n)
                        .map(|i| message(alice, i + 1_000_000_000))
                        .collect::<Vec<_>>()
                },
                |batch| {
                    let replies: Vec<_> = batch.into_iter().map(|m| store.append(m)).collect();
                    rt.block_on(async {
                        for r in replies {
                            black_box(r.await.unwrap());
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
        rt.block_on(store.close()).unwrap();
    }
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let alice = setup(&rt, memory.as_ref());
    let mut n = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(memory.append(message(alice, n))).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, write_path);
criterion_main!(benches);
